"""Build hook: generate the gRPC code from proto/ before packaging (nothing generated is committed).

It runs whenever setuptools loads this file, before any command: even egg_info must find the
``music_analytics.api`` package directory (proto/gen) on a fresh clone.
"""

import importlib.util
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def generate_protos() -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(ROOT / "proto" / "gen")


generate_protos()
setup()
