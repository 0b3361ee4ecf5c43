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
    assert time.perf_counter() - start < 3.0


def test_parse_number_forms():
    assert parse_number("-3.5") == -3.5 and parse_number("50%") == 50 and parse_number("abc") is None
