"""Learning: the policy-gradient learner (`learner.py`, with its pure objectives in `objectives.py`), its
plug-ins (`plugin.py` defines what one is; `plugins/` holds one module per paper), named presets
(`presets.py`) and the `agentenv train` loop (`train.py`). It consumes the rollout's `Episode`s
(`agentenv.rollout`) and never touches an env directly."""
