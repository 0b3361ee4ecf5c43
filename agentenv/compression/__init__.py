"""Context compression: rewrite a long chat history to a token budget, and score how well it was done.

    import agentenv.compression as compression

    messages, record = compression.get("zip")(messages, budget_tokens=2048)
    env = gym.make("agentenv/Ledger-v0", compressor="zip", budget_tokens=2048)   # any env

Compressors (`COMPRESSORS`): "none" (full history), "window" (last turns that fit), "mask_observations"
(SWE-agent placeholders for old tool outputs), "summarize" (the policy writes a coarse-to-fine summary)
and "zip" (ZipRL: one of five levels per old turn, by relevance to the task (mode "rule", the policy may pin
levels with `<zip turn=K level=N/>`), as the policy chooses (mode "agent", `<zip level=N/>`) or one level for
all (mode "uniform"); `compressor_options={"mode": ...}` in `gym.make`). Every call returns a record with token counts, per-turn levels and per-turn
Q_com (`quality.py`). Tokens are counted exactly (`tokens.py`).
"""

from __future__ import annotations

from typing import Any

from agentenv.compression.base import Compressor, fit_to_budget
from agentenv.compression.baselines import MaskObservations, NoCompression, Window
from agentenv.compression.context import ContextWindow
from agentenv.compression.quality import QComWeights
from agentenv.compression.summarize import ExtractiveSummarizer, Summarize
from agentenv.compression.tokens import TokenCounter, get_counter
from agentenv.compression.zip import Zip

__all__ = [
    "COMPRESSORS", "get", "Compressor", "NoCompression", "Window", "MaskObservations", "Summarize", "Zip",
    "ExtractiveSummarizer", "ContextWindow", "QComWeights", "TokenCounter", "get_counter", "fit_to_budget",
]

COMPRESSORS: dict[str, type[Compressor]] = {
    "none": NoCompression,
    "window": Window,
    "mask_observations": MaskObservations,
    "summarize": Summarize,
    "zip": Zip,
}


def get(name: str | Compressor, **kwargs: Any) -> Compressor:
    """A new compressor by name (keyword arguments go to its constructor); a `Compressor` is returned as is."""
    if isinstance(name, Compressor):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a compressor name")
        return name
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose one of {sorted(COMPRESSORS)} or pass a Compressor")
    return COMPRESSORS[name](**kwargs)
