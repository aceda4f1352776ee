"""The `gpu` extra resolves: pip's resolver, against the package registry, for a CUDA Linux node.

    .venv/bin/python -m pytest -q tests/test_install.py              # needs the registry (CI has it)
    .venv/bin/python -m pytest -q -m "not network"                  # offline: deselects it

Why not plain ``pip install --dry-run '.[gpu]'``: on a development machine pip may take a local
CPU build of torch (``torch-2.13.0+cpu`` satisfies ``torch==2.13.0``), whose metadata lacks the CUDA
build's ``triton==3.7.1`` pin, and a resolution that passes there fails on the GPU node. So torch
is asked for as ``torch===2.13.0`` (exactly that version string: the registry's CUDA build) and the
requirements (the base dependencies + the `gpu` extra, read from pyproject.toml) are resolved as
wheels for the node's platform (``--only-binary :all: --platform manylinux_2_28_x86_64 …
--python-version 3.X``): the registry's CUDA torch wheel, whatever this machine has installed.
The first run downloads wheels for their metadata (several GB: torch, NVIDIA libraries, vLLM);
pip's cache makes later runs fast. Transformer Engine's PyTorch extension is source-only and built
by `make setup-gpu`; only its wheel dependencies are resolved here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A glibc-2.35 x86-64 node (Ubuntu 22.04, the usual CUDA image; vLLM's llguidance needs 2.31)
# takes wheels tagged for any older manylinux; pip's --platform matches tags exactly, so all are listed.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def _registry_build(req: str) -> str:
    """`torch==2.13.0` also matches a local `2.13.0+cpu` wheel; `===` matches the registry's CUDA
    build (version string exactly `2.13.0`) only."""
    return req.replace("==", "===", 1) if _name(req) == "torch" else req


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def gpu_requirements() -> list[str]:
    project = _pyproject()["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["gpu"])


def _name(req: str) -> str:
    return re.split(r"[\[=<>!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_gpu_extra_pins_exactly_and_agrees_with_the_base():
    """Offline: every requirement of the GPU install is an exact pin, and no package is pinned
    twice to different versions (the base and the extra are installed together)."""
    pins: dict[str, str] = {}
    for req in gpu_requirements():
        assert "==" in req, f"pyproject.toml: {req!r} in the base or `gpu` extra is not an exact pin"
        name, version = _name(req), req.split("==", 1)[1].split(";")[0].strip()
        assert pins.setdefault(name, version) == version, f"pyproject.toml pins {name} twice: {pins[name]}, {version}"
    assert pins["torch"] == "2.13.0" and pins["vllm"] == "0.32.0"
    assert "triton" not in {_name(r) for r in _pyproject()["project"]["dependencies"]}, (
        "triton must be pinned per extra: the CUDA torch build pins its own (3.7.1)")


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("python_version", ["3.12"])  # the GPU images' Python; 3.11 resolves the same pins
def test_gpu_extra_resolves_for_a_cuda_node(python_version: str, tmp_path: Path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--only-binary", ":all:", *[a for p in PLATFORMS for a in ("--platform", p)], "--python-version", python_version,
           "--target", str(tmp_path / "target"), "--report", str(report),
           *map(_registry_build, gpu_requirements())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"the gpu extra does not resolve for Python {python_version}:\n{proc.stderr[-3000:]}"
    installed = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    assert installed["torch"] == "2.13.0", "the registry's CUDA build of torch (no +cpu tag) must be resolved"
    assert installed["vllm"] == "0.32.0" and installed["triton"] == "3.7.1"
    assert installed["megatron-core"] == "0.16.1" and installed["transformer-engine-cu13"] == "2.20.2"
