"""Build hook: generate the gRPC code from proto/ before packaging (nothing generated is committed)."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithProtos(build_py):
    def run(self) -> None:
        spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate(ROOT / "proto" / "gen")
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
