#!/usr/bin/env bash
# Create a SEPARATE virtual environment (.venv-trl, gitignored via `.venv-*/`) holding TRL, the peer that
# benchmarks/bench_learner.py compares one GRPO update against. TRL is NOT a dependency of agentenv and
# must never be installed into the project venv (.venv).
#
#   torch        2.13.0   installed FIRST, alone: the CPU wheel is on local disk (pip find-links); any
#                         other torch spec would make pip pull multi-GB CUDA wheels from the registry
#   transformers 5.25.0   the same version as the project venv, so both sides run identical Qwen2 code
#   trl          1.16.0   (+ its deps: accelerate, datasets)
#
# Idempotent: if the venv exists and the pinned versions import, it does nothing.
# Usage:  bash benchmarks/setup_trl.sh        (TRL_VENV=/other/path to override)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRL_VENV:-$ROOT/.venv-trl}"
PY_BOOT="${PYTHON:-python3}"

TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="5.25.0"
TRL_VERSION="1.16.0"

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$TRL_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("torch").split("+")[0] == sys.argv[1], version("torch")
assert version("transformers") == sys.argv[2], version("transformers")
assert version("trl") == sys.argv[3], version("trl")
import torch, datasets, trl  # noqa: F401
from trl import GRPOConfig, GRPOTrainer  # noqa: F401
EOF
}

if check; then
    echo "trl venv ready: $VENV (torch==$TORCH_VERSION, transformers==$TRANSFORMERS_VERSION, trl==$TRL_VERSION)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY_BOOT" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==$TORCH_VERSION"
# Constrain torch to the version just installed so nothing below can swap it for a CUDA build.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "transformers==$TRANSFORMERS_VERSION" "trl==$TRL_VERSION" datasets

if check; then
    echo "trl venv ready: $VENV (torch==$TORCH_VERSION, transformers==$TRANSFORMERS_VERSION, trl==$TRL_VERSION)"
else
    echo "trl venv at $VENV failed its import check" >&2
    "$VENV/bin/python" -c "import trl" >&2 || true
    exit 1
fi
