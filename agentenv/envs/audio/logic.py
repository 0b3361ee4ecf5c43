"""A rule engine for ALR-style entailment items: categorical syllogisms and propositional arguments.

Every item is a known argument form (Barbara, modus tollens, affirming the consequent, ...) filled with
random terms, so its label is right by construction (modern semantics: "All A are B" does not assert that
any A exist; forms whose validity hinges on existential import are left out). The label is drawn first
(a fair coin), then a *conclusion type* uniformly, then a form of that type with that label: the
conclusion's wording (the only part given as text) therefore says nothing about the label. Distractor
premises speak about fresh terms and cannot change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Argument", "draw_argument", "TERMS", "ATOMS", "FORMS"]

TERMS = (
    "painters", "sailors", "doctors", "chess players", "farmers", "pilots", "teachers", "singers", "bakers",
    "lawyers", "gardeners", "drummers", "engineers", "poets", "cyclists", "tailors", "dancers", "miners",
    "golfers", "writers", "plumbers", "skaters", "nurses", "jugglers",
)
# (subject, property): "the door is open" / "the door is not open"; every subject is used once per item
ATOMS = (
    ("the door", "open"), ("the light", "on"), ("the alarm", "active"), ("the road", "wet"),
    ("the shop", "closed"), ("the train", "late"), ("the printer", "busy"), ("the garden", "flooded"),
    ("the museum", "crowded"), ("the oven", "hot"), ("the bridge", "raised"), ("the window", "locked"),
    ("the kettle", "full"), ("the river", "frozen"),
)

Literal = tuple[int, bool]  # (atom index into the item's atoms, positive?)


@dataclass(frozen=True)
class Argument:
    """Spoken premises (sentences), the conclusion (a sentence) and whether the premises entail it."""

    premises: tuple[str, ...]
    conclusion: str
    entailed: bool
    form: str


# Categorical statements: (quantifier, subject term, predicate term) with terms 0 = A (subject of the
# conclusion), 1 = B (middle), 2 = C (predicate of the conclusion).
_CATEGORICAL = {
    "all": {
        True: {"Barbara": [("all", 0, 1), ("all", 1, 2)]},
        False: {"undistributed middle": [("all", 0, 1), ("all", 2, 1)], "illicit conversion": [("all", 2, 0)],
                "all-some": [("all", 0, 1), ("some", 1, 2)]},
    },
    "no": {
        True: {"Celarent": [("no", 1, 2), ("all", 0, 1)], "Cesare": [("no", 2, 1), ("all", 0, 1)],
               "Camestres": [("all", 2, 1), ("no", 0, 1)]},
        False: {"two negatives": [("no", 0, 1), ("no", 1, 2)], "illicit minor": [("no", 0, 1), ("all", 1, 2)],
                "some-no": [("some", 0, 1), ("no", 1, 2)]},
    },
    "some": {
        True: {"Darii": [("all", 1, 2), ("some", 0, 1)], "Disamis": [("some", 1, 0), ("all", 1, 2)],
               "conversion": [("some", 2, 0)]},
        False: {"undistributed middle": [("all", 0, 1), ("some", 1, 2)], "two particulars": [("some", 0, 1), ("some", 1, 2)]},
    },
    "some_not": {
        True: {"Ferio": [("no", 1, 2), ("some", 0, 1)], "Baroco": [("all", 2, 1), ("some_not", 0, 1)]},
        False: {"some-some not": [("some", 0, 1), ("some_not", 1, 2)], "all-some not": [("all", 0, 1), ("some_not", 1, 2)],
                "illicit major": [("some_not", 0, 1), ("all", 1, 2)]},
    },
}
_CATEGORICAL_TEXT = {"all": "All {} are {}.", "no": "No {} are {}.", "some": "Some {} are {}.", "some_not": "Some {} are not {}."}

# Propositional statements over atoms 0 = P, 1 = Q, 2 = R: ("lit", l), ("if", l1, l2), ("or", l1, l2).
P, Q, R = (0, True), (1, True), (2, True)
nP, nQ = (0, False), (1, False)
_PROPOSITIONAL = {
    "literal": {
        True: {"modus ponens": ([("if", P, Q), ("lit", P)], ("lit", Q)),
               "disjunctive syllogism": ([("or", P, Q), ("lit", nP)], ("lit", Q))},
        False: {"affirming the consequent": ([("if", P, Q), ("lit", Q)], ("lit", P)),
                "or-or": ([("or", P, Q), ("lit", P)], ("lit", Q))},
    },
    "negated literal": {
        True: {"modus tollens": ([("if", P, Q), ("lit", nQ)], ("lit", nP)),
               "negative modus tollens": ([("if", P, nQ), ("lit", Q)], ("lit", nP))},
        False: {"denying the antecedent": ([("if", P, Q), ("lit", nP)], ("lit", nQ)),
                "affirming a disjunct": ([("or", P, Q), ("lit", P)], ("lit", nQ))},
    },
    "conditional": {
        True: {"hypothetical syllogism": ([("if", P, Q), ("if", Q, R)], ("if", P, R)),
               "contraposition": ([("if", P, Q)], ("if", nQ, nP))},
        False: {"converse": ([("if", P, Q)], ("if", Q, P)), "shared consequent": ([("if", P, Q), ("if", R, Q)], ("if", P, R)),
                "inverse": ([("if", P, Q)], ("if", nP, nQ))},
    },
}

FORMS = {**{f"categorical {k}": v for k, v in _CATEGORICAL.items()}, **_PROPOSITIONAL}


def _clause(atom: tuple[str, str], positive: bool) -> str:
    subject, prop = atom
    return f"{subject} is {prop}" if positive else f"{subject} is not {prop}"


def _proposition(statement: tuple, atoms: list[tuple[str, str]]) -> str:
    kind, *lits = statement
    clauses = [_clause(atoms[i], positive) for i, positive in lits]
    if kind == "lit":
        text = f"{clauses[0]}."
    elif kind == "if":
        text = f"if {clauses[0]}, then {clauses[1]}."
    else:
        text = f"either {clauses[0]} or {clauses[1]}, or both."
    return text[0].upper() + text[1:]


def _pick(rng: np.random.Generator, options: dict) -> tuple[str, object]:
    name = sorted(options)[int(rng.integers(len(options)))]
    return name, options[name]


def draw_argument(rng: np.random.Generator, distractors: int = 0, entailed: bool | None = None) -> Argument:
    """A random argument with a balanced label (or the given one) and `distractors` irrelevant premises."""
    entailed = bool(rng.random() < 0.5) if entailed is None else entailed
    conclusion_type = sorted(FORMS)[int(rng.integers(len(FORMS)))]
    form, shape = _pick(rng, FORMS[conclusion_type][entailed])
    if conclusion_type.startswith("categorical"):
        picked = rng.choice(len(TERMS), size=3 + 2 * distractors, replace=False)
        terms = [TERMS[i] for i in picked]
        premises = [_CATEGORICAL_TEXT[q].format(terms[a], terms[b]) for q, a, b in shape]
        quantifier = conclusion_type.removeprefix("categorical ")
        conclusion = _CATEGORICAL_TEXT[quantifier].format(terms[0], terms[2])
        extra = [
            _CATEGORICAL_TEXT[str(rng.choice(list(_CATEGORICAL_TEXT)))].format(terms[3 + 2 * i], terms[4 + 2 * i])
            for i in range(distractors)
        ]
    else:
        picked = rng.choice(len(ATOMS), size=3 + 2 * distractors, replace=False)
        atoms = [ATOMS[i] for i in picked]
        statements, concluded = shape
        premises = [_proposition(s, atoms) for s in statements]
        conclusion = _proposition(concluded, atoms)
        extra = [
            _proposition(("if", (3 + 2 * i, bool(rng.random() < 0.5)), (4 + 2 * i, bool(rng.random() < 0.5))), atoms)
            for i in range(distractors)
        ]
    premises = [premises[i] for i in rng.permutation(len(premises))]  # no positional shortcut (major first)
    for sentence in extra:  # distractors go anywhere among the premises
        premises.insert(int(rng.integers(len(premises) + 1)), sentence)
    return Argument(tuple(premises), conclusion, entailed, form)
