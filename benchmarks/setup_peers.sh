#!/usr/bin/env bash
# Create a SEPARATE virtual environment (.venv-peers, gitignored via `.venv-*/`)
# holding the peer frameworks that benchmarks/bench_env.py compares against:
#
#   gem-llm   0.1.0  (import name `gem`)
#   skyrl-gym 0.4.0  (import name `skyrl_gym`)
#
# They are NOT dependencies of agentenv and must never be installed into the
# project venv (.venv). Neither pulls torch with its default (non-extra)
# dependencies, so a plain pinned install is enough; no `--no-deps` tricks needed.
#
# gem-llm 0.1.0 under-declares its deps: gem/envs/math_env.py imports `datasets`
# and gem/utils/math_grader.py imports `pylatexenc`, neither of which is in its
# Requires-Dist. We add them (pinned) so gem's MathEnv imports. MathEnv is given
# an in-memory datasets.Dataset; nothing is fetched from a hub.
#
# Idempotent: if the venv exists and both pinned versions import, it does nothing.
# Usage:  bash benchmarks/setup_peers.sh        (PEERS_VENV=/other/path to override)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY_BOOT="${PYTHON:-python3}"

GEM_VERSION="0.1.0"
SKYRL_GYM_VERSION="0.4.0"
# gem-llm's undeclared runtime deps (see above).
EXTRA_PINS=("datasets==5.2.0" "pylatexenc==2.11")

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$GEM_VERSION" "$SKYRL_GYM_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("gem-llm") == sys.argv[1], version("gem-llm")
assert version("skyrl-gym") == sys.argv[2], version("skyrl-gym")
import gem, gem.tools.python_code_tool, gem.tools.tool_env_wrapper, gem.envs.math_env  # noqa: F401
import skyrl_gym, skyrl_gym.tools.python, skyrl_gym.envs.searchcode.env  # noqa: F401
import skyrl_gym.envs.gsm8k.multi_turn_env, skyrl_gym.envs.rlm.env  # noqa: F401
EOF
}

if check; then
    echo "peers venv ready: $VENV (gem-llm==$GEM_VERSION, skyrl-gym==$SKYRL_GYM_VERSION)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY_BOOT" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "gem-llm==$GEM_VERSION" \
    "skyrl-gym==$SKYRL_GYM_VERSION" \
    "${EXTRA_PINS[@]}"

if check; then
    echo "peers venv ready: $VENV (gem-llm==$GEM_VERSION, skyrl-gym==$SKYRL_GYM_VERSION)"
else
    echo "peers venv at $VENV failed its import check" >&2
    "$VENV/bin/python" -c "import gem, skyrl_gym" >&2 || true
    exit 1
fi
