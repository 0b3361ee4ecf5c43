"""Answer matching: exact numbers, symbolic equality, and safety against hostile answers."""

import time

import pytest

from agentenv.rewards.math_match import answers_match, parse_number


@pytest.mark.parametrize(
    "predicted, reference",
    [("42", "42"), ("42.0", "42"), ("1,234", "1234"), ("3/4", "0.75"), (r"\frac{3}{4}", "0.75"), ("$12$", "12"),
     (r"\boxed{7}", "7"), ("12 meters", "12"), ("0.3333333334", "1/3"), ("2x+1", "1+2*x"), (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
     ("x^2 - 1", "(x-1)(x+1)"), ("Entailed", "entailed")],
)
def test_equal_answers(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize(
    "predicted, reference",
    [("41", "42"), ("0.76", "0.75"), ("", "1"), ("forty-two", "42"), ("2x+2", "2x+1"), ("1 or 2", "2"), ("not entailed", "entailed")],
)
def test_different_answers(predicted, reference):
    assert not answers_match(predicted, reference)


@pytest.mark.parametrize("hostile", ["__import__('os').system('echo hi')", "9**9**9**9", "x**99999999", "(" * 500, "a" * 10_000])
def test_hostile_answers_are_rejected_fast(hostile):
    start = time.perf_counter()
    assert not answers_match(hostile, "x+1")
    assert time.perf_counter() - start < 15.0  # the symbolic timeout is 2 s; the margin is for machine load


def test_parse_number_forms():
    assert parse_number("-3.5") == -3.5 and parse_number("50%") == 50 and parse_number("abc") is None


def test_symbolic_check_does_not_pay_the_sympy_import_inside_its_timeout(monkeypatch):
    """Under load the first symbolic comparison of a process timed out on the import alone. Now the import
    and warm-up run before the clock: with a budget far below sympy's import time, a fresh process still
    scores the correct answer (the remaining work is one parse and one simplify)."""
    import subprocess
    import sys

    code = (
        "import agentenv.rewards.math_match as m\n"
        "m.SYMBOLIC_TIMEOUT_S = 0.15\n"  # sympy's import takes 0.24 s on a quiet machine; the check, ~5 ms
        "r = m.match_answer('(x-1)*(x+1)', 'x^2 - 1')\n"
        "print(r.equal, r.timed_out)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_a_timed_out_symbolic_check_is_reported_not_silent(monkeypatch):
    import agentenv.rewards.math_match as m

    m._sympy()
    monkeypatch.setattr(m, "_symbolic_equal", lambda a, b: __import__("time").sleep(1.0))
    monkeypatch.setattr(m, "SYMBOLIC_TIMEOUT_S", 0.05)
    result = m.match_answer("(x-1)*(x+1)", "x^2 - 1")
    assert result == m.AnswerMatch(False, timed_out=True)
