"""Every document under docs/ that a docstring or comment cites is in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cited_documents_exist():
    cited = set()
    for path in [*ROOT.glob("agentenv/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), ROOT / "README.md"]:
        cited |= set(re.findall(r"\bdocs/[\w./-]+\.md", path.read_text(encoding="utf-8")))
    assert cited, "no citations found: the pattern is wrong"
    missing = sorted(c for c in cited if not (ROOT / c).exists())
    assert not missing, missing
    for path in ROOT.glob("agentenv/**/*.py"):  # the old bare names pointed outside the repository
        assert not re.search(r"(?<!docs/)\b(DESIGN\.md|anchors-\w+\.md)", path.read_text(encoding="utf-8")), path
