"""What skaffold sees of the image build: the Dockerfile's COPY sources after .dockerignore.

skaffold decides when to rebuild (and computes the inputDigest tag) from the files the Dockerfile
copies from the context, minus what .dockerignore excludes; a COPY source missing from the
checkout stops it before any build. So on a fresh clone (the tracked files, nothing built) every
COPY source must exist, and every source file of the project must be an input: an edit under
services/, client/ or proto/ rebuilds. .dockerignore is applied with docker-py's matcher, a port of
Docker's own (last match wins, `!` re-includes, a match on a directory covers what is under it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
# The project's own code: the image must be built from these, never from anything prebuilt.
SOURCE_DIRS = ("services/", "client/", "proto/")
BUILD_FILES = ("pyproject.toml", "setup.py", "proto/generate.py", "README.md")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files as they are in the working tree, plus the leftovers a developer has:
    generated code and bytecode, which must not be inputs (they would rebuild on every install)."""
    clone = tmp_path_factory.mktemp("clone")
    for name in tracked_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


def copy_sources() -> list[str]:
    """The context paths of every COPY/ADD (not those copying from another stage)."""
    sources = []
    for instruction in DockerfileParser(str(ROOT / "Dockerfile")).structure:
        if instruction["instruction"] not in ("COPY", "ADD"):
            continue
        words = instruction["value"].split()
        if any(word.startswith("--from=") for word in words):
            continue
        args = [word for word in words if not word.startswith("--")]
        sources += args[:-1]  # the last one is the destination
    return sources


def inputs(clone: Path) -> set[str]:
    """The files skaffold hashes and watches: under a COPY source and not excluded."""
    patterns = [
        line.strip()
        for line in (clone / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = exclude_paths(str(clone), patterns)
    found = set()
    for source in copy_sources():
        prefix = source.strip("/")
        found |= {p for p in context if (clone / p).is_file() and (p == prefix or p.startswith(prefix + "/"))}
    return found


def test_every_copy_source_is_in_a_fresh_clone(fresh_clone: Path):
    # skaffold fails on a COPY source that matches nothing, before any build hook could make it.
    sources = copy_sources()
    assert sources
    for source in sources:
        assert (fresh_clone / source).exists(), f"COPY {source}: not in a fresh clone"
        assert not source.startswith(("build/", "dist/")), f"COPY {source}: a build output, not a source"


def test_project_sources_are_inputs(fresh_clone: Path):
    watched = inputs(fresh_clone)
    expected = {
        name for name in tracked_files() if name.startswith(SOURCE_DIRS) and name.endswith((".py", ".proto"))
    } | set(BUILD_FILES)
    assert {name for name in expected if name.startswith("services/")}, "no services/ files found"
    missing = sorted(expected - watched)
    assert not missing, f"not seen by skaffold (edits would not rebuild): {missing}"
    # The pins the build installs from are inputs too: a bumped pin rebuilds.
    assert {"k8s/image-requirements.txt", "k8s/build-requirements.txt"} <= watched


def test_leftovers_are_not_inputs(fresh_clone: Path):
    (fresh_clone / "proto" / "gen").mkdir(exist_ok=True)
    (fresh_clone / "proto" / "gen" / "events_pb2.py").write_text("# generated\n")
    cache = fresh_clone / "services" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "registry.cpython-311.pyc").write_bytes(b"\0")
    (fresh_clone / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    (fresh_clone / ".venv" / "bin" / "python").write_text("")
    watched = inputs(fresh_clone)
    stray = sorted(p for p in watched if p.startswith(("proto/gen/", ".venv/", "build/")) or "__pycache__" in p)
    assert not stray, f"generated or local files would be build inputs: {stray}"
    # Nothing but what the build copies: the context itself stays small.
    context = exclude_paths(
        str(fresh_clone),
        [
            line
            for line in (fresh_clone / ".dockerignore").read_text().splitlines()
            if line and not line.startswith("#")
        ],
    )
    assert not [p for p in context if p.startswith(("tests/", "charts/", ".git/", ".venv/", "bench/"))]


def test_skaffold_builds_without_a_host_step():
    # The image builds from the sources alone: no `make wheels` hook (it ran after skaffold had
    # already failed to hash a missing build/wheels on a fresh clone).
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    for artifact in config["build"]["artifacts"]:
        assert "hooks" not in artifact, artifact["hooks"]
        assert artifact.get("context", ".") == "."


def test_base_image_is_the_current_python_311_patch():
    # 3.11.14 was superseded; 3.11.18 is the latest 3.11 release (uv 0.13.9's list of CPython
    # builds, the newest source of release facts reachable here). The Dockerfile's default and
    # `make image`'s must agree, so every build path uses the same interpreter.
    dockerfile = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    kind_mk = re.search(r"^BASE_IMAGE \?= (\S+)$", (ROOT / "k8s" / "kind.mk").read_text(), re.MULTILINE)
    assert dockerfile and kind_mk
    assert dockerfile.group(1) == kind_mk.group(1)
    match = re.fullmatch(r"docker\.io/library/python:3\.11\.(\d+)-slim-bookworm", dockerfile.group(1))
    assert match and int(match.group(1)) >= 18, dockerfile.group(1)


def test_every_python_package_of_the_tree_is_installed() -> None:
    """setuptools installs the packages pyproject.toml lists, no more: a new folder of modules left
    out works in the editable install of a checkout and is missing from the wheel the image holds."""
    import tomllib

    setuptools_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {folder: name for name, folder in setuptools_config["package-dir"].items()}
    found = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    assert found - {"music_analytics.api"} <= set(setuptools_config["packages"])
