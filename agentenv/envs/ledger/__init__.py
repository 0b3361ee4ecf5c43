"""Ledger-v0: the env (`env.py`), the seeded fact stream behind it (`stream.py`) and its scripted reader
(`scripted.py`)."""
