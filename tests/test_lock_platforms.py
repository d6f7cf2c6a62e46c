"""The image's pins resolve on both supported platforms: linux/amd64 and linux/arm64.

For each platform, k8s/build-wheelhouse.sh (what offline image builds use) downloads every pin of
k8s/image-requirements.txt and k8s/build-requirements.txt as a CPython 3.11 manylinux wheel for
that platform (or a pure-Python one): it fails if any pin has none. Then pip resolves, offline
against that wheelhouse, the project's own declared dependencies together with the lock: if the
lock lacked a dependency needed on that platform, or pinned a version the project excludes, the
resolution fails. The wheels are kept under MUSIC_ANALYTICS_WHEEL_CACHE, so a second run needs
no network (about a second per platform).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.support.requirements_pins import pins

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MUSIC_ANALYTICS_WHEEL_CACHE", "/var/tmp/music-analytics-wheels"))
PLATFORMS = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}

pytestmark = pytest.mark.timeout(900)


def project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The image installs the kubernetes extra (the Job writes its results to a ConfigMap).
    return [*project["dependencies"], *project["optional-dependencies"]["kubernetes"]]


def wheelhouse(platform: str) -> Path:
    out = CACHE / platform.replace("/", "-")
    result = subprocess.run(
        [str(ROOT / "k8s" / "build-wheelhouse.sh"), "--python", sys.executable, "--platform", platform, str(out)],
        capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert result.returncode == 0, f"a pin has no wheel for {platform}:\n{result.stderr[-3000:]}"
    return out


def resolve(platform: str, wheels: Path, requirements: list[str], tmp_path: Path) -> dict[str, str]:
    """What pip installs for ``requirements`` on ``platform`` from ``wheels`` alone."""
    arch = PLATFORMS[platform]
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + [f"manylinux2014_{arch}"]
    report = tmp_path / f"report-{arch}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
        "--ignore-installed", "--no-index", "--find-links", str(wheels), "--only-binary=:all:",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *[arg for tag in tags for arg in ("--platform", tag)],
        "--target", str(tmp_path / f"target-{arch}"), "--report", str(report), *requirements,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"does not resolve for {platform}:\n{result.stderr[-3000:]}"
    installed = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_every_pin_resolves_on(platform: str, tmp_path: Path):
    wheels = wheelhouse(platform)
    lock = pins(ROOT / "k8s" / "image-requirements.txt")
    pinned = [f"{name}=={version}" for name, version in lock.items()]
    runtime = resolve(platform, wheels, [*pinned, *project_requirements()], tmp_path)
    assert runtime == lock, f"{platform}: resolved {runtime}, lock {lock}"
    build = pins(ROOT / "k8s" / "build-requirements.txt")
    resolved = resolve(platform, wheels, [f"{name}=={version}" for name, version in build.items()], tmp_path)
    assert resolved == build, f"{platform}: the build requirements are not a complete pin set: {resolved}"
