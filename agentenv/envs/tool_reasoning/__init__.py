"""ToolReasoning-v0: the env (`env.py`), its seeded task generator (`tasks.py`) and its scripted agent
(`scripted.py`)."""
