"""Generate the Python gRPC code for proto/music/v1 into one package directory.

protoc names imports after the .proto path (``from music.v1 import events_pb2``); we rewrite
them to the installed package (``from music_analytics.api import events_pb2``) so the
generated modules live inside our namespace instead of a top-level ``music`` package.
Run by the build (setup.py) and by ``make proto``; the output is never committed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "music_analytics.api"
_IMPORT = re.compile(r"^from music\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto under music/v1 into ``out_dir`` and return the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "music" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    with _staging() as staging:
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={staging}",
                f"--pyi_out={staging}",
                f"--grpc_python_out={staging}",
                *protos,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        written = []
        for src in sorted((Path(staging) / "music" / "v1").iterdir()):
            dst = out_dir / src.name
            dst.write_text(_IMPORT.sub(f"from {PACKAGE} import ", src.read_text()))
            written.append(dst)
    (out_dir / "__init__.py").write_text('"""Generated from proto/music/v1 by proto/generate.py; do not edit."""\n')
    return written


def _staging():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="music-proto-")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT / "gen"
    for path in generate(target):
        print(path)
