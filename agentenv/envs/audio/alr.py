"""Load ALR (SoundMind's Audio Logical Reasoning set) from a local copy, as `AudioTask`s.

The layout of the released data (HF `SoundMind-RL/SoundMindDataset`):

    <root>/<split>/metadata.jsonl            rows: id, question_file_name, answer_file_name,
                                             annotation_question, annotation_answer, label (0/1)
    <root>/<split>/<id>/question.wav         the spoken item (premises and conclusion)
    <root>/<split>/<id>/answer_<label>.wav   the spoken reference answer
    <root>/<split>/<id>/annotation.json      the same fields for one item

Either `metadata.jsonl` or the per-item `annotation.json` files are enough. The label is the integer
`label` field (1 = entailed, 0 = not-entailed), else the `<label>` of the `answer_<label>.wav` file name;
it is never parsed from the reference text (SoundMind's bug: "not entailed" contains "entailed").
Audio is mixed to mono and resampled to 16 kHz.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentenv.envs.audio.signals import SAMPLE_RATE, wav_to_array
from agentenv.envs.audio.tasks import NLI_LABELS, AudioTask

__all__ = ["load_alr", "ALR_QUESTION"]

ALR_QUESTION = (
    "The audio states premises and a conclusion. Is the conclusion entailed by the premises? "
    "Answer entailed or not-entailed."
)
_LABELS = {"1": "entailed", "0": "not-entailed", "entailed": "entailed", "not-entailed": "not-entailed",
           "not_entailed": "not-entailed"}


def _label(value: Any, where: str) -> str:
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise ValueError(f"{where}: label {value!r} is not 0/1 or entailed/not-entailed")
    return _LABELS[key]


def _rows(split_dir: Path) -> list[dict[str, Any]]:
    meta = split_dir / "metadata.jsonl"
    if meta.exists():
        with open(meta, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    rows = []
    for item in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        annotation = item / "annotation.json"
        row = json.loads(annotation.read_text(encoding="utf-8")) if annotation.exists() else {}
        row.setdefault("id", item.name)
        rows.append(row)
    return rows


def _find(split_dir: Path, row: dict[str, Any], name: str | None, pattern: str) -> Path | None:
    """A file named in the row (relative to the split or the item folder), else the first `pattern` match."""
    item = split_dir / str(row.get("id", ""))
    for base in (split_dir, item):
        if name and (base / name).exists():
            return base / name
    return next(iter(sorted(item.glob(pattern))), None) if item.is_dir() else None


def load_alr(path: str | Path, split: str | None = None, limit: int | None = None) -> list[AudioTask]:
    """ALR items under `path` (a split folder, or the root with `split` = "train" / "dev" / "test")."""
    split_dir = Path(path) / split if split else Path(path)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a directory; pass an ALR split folder (e.g. .../test)")
    tasks = []
    for row in _rows(split_dir)[:limit]:
        where = f"{split_dir} item {row.get('id')!r}"
        question = _find(split_dir, row, row.get("question_file_name"), "question*.wav")
        if question is None:
            raise FileNotFoundError(f"{where}: no question.wav")
        if "label" in row:
            label = _label(row["label"], where)
        else:
            answer = _find(split_dir, row, row.get("answer_file_name"), "answer_*.wav")
            if answer is None:
                raise ValueError(f"{where}: no 'label' field and no answer_<label>.wav to read it from")
            label = _label(answer.stem.removeprefix("answer_"), where)
        reference = str(row.get("annotation_answer", ""))
        tasks.append(AudioTask(
            kind="alr", question=ALR_QUESTION, label=label, answer_type="nli",
            audio=wav_to_array(question, SAMPLE_RATE), choices=NLI_LABELS,
            transcript=str(row.get("annotation_question", "")), ref_words=len(reference.split()) or None,
        ))
    if not tasks:
        raise ValueError(f"no ALR items found in {split_dir}")
    return tasks
