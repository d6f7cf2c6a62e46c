"""The README's commands (`make demo`, `make test`) need nothing outside the repository.

A user's clone has no ../shared folder (or anything else beside it), so no file that those
commands run or read may point there. Checked on the tracked files, i.e. what a fresh clone has.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Files that the README's commands execute or read: the Makefile and what it includes, the CI
# entry point, the build scripts, the Python sources and tests, the chart and k8s setup.
RUN_BY_COMMANDS = re.compile(r"^(Makefile|.*\.mk|\.ci/.*|.*\.(py|sh|toml|cfg|ini|yaml|yml|json|tpl|txt))$")
# Ways of reaching outside the clone: a ../shared path, or the repository root's parent.
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
OUTSIDE = re.compile(r"\.\./shared|ROOT\.parent\b|parent\.parent\.parent|[\"']shared[\"']\s*/")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def test_nothing_run_by_the_readme_commands_reads_outside_the_repository():
    offenders = []
    for name in tracked_files():
        # This file names the patterns it looks for.
        if name == SELF or not RUN_BY_COMMANDS.match(name) or not (ROOT / name).is_file():
            continue
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "reads outside the clone:\n" + "\n".join(offenders)


def test_skaffold_schema_is_vendored_with_its_licence():
    schemas = ROOT / "tests" / "schemas"
    tracked = set(tracked_files())
    for name in ("skaffold-v4beta14.json", "LICENSE", "NOTICE"):
        assert f"tests/schemas/{name}" in tracked, f"tests/schemas/{name} is not committed"
    assert "Apache License" in (schemas / "LICENSE").read_text()
    assert "GoogleContainerTools/skaffold" in (schemas / "NOTICE").read_text()
