"""The ``where`` language (`deepergat.screening.where`): parsed, never evaluated as Python;
composition, novelty and group terms; bounded cost for hostile texts."""

from __future__ import annotations

import numpy as np
import pytest

from deepergat.errors import SettingError
from deepergat.screening.where import (
    MAX_DEPTH,
    MAX_TERMS,
    MAX_TEXT,
    Where,
    canonical_formula,
    comparable_columns,
)

COLUMNS = comparable_columns(["heat_ref"], spread=True)
ROWS = {
    "heat_ref": np.array([-0.5, 0.1, 0.4, np.nan, -1.0]),
    "heat_ref_std": np.array([0.01, 0.2, 0.05, np.nan, 0.3]),
    "status": np.array([0, 0, 0, 7, 0]),
    "flags": np.array([0, 1, 0, 0, 0]),
    "formula": np.array(["SrTiO3", "KFeO2", "PbTiO3", "NaCl", "Sr2FeMoO6"], dtype=object),
    "n_elements": np.array([3, 3, 3, 2, 4]),
    "group_size": np.array([3, 1, 1, 1, 2]),
    "novel": np.array([True, False, True, True, True]),
    "known": np.array([False, True, False, False, False]),
}


def rows(text: str) -> list[int]:
    return np.flatnonzero(Where(text, COLUMNS).evaluate(ROWS.__getitem__)).tolist()


def test_numbers_compositions_novelty_and_groups() -> None:
    assert rows("heat_ref < 0.2") == [0, 1, 4]  # NaN never matches
    assert rows("0.2 > heat_ref and heat_ref_std <= 0.05") == [0]
    assert rows("has(Fe) and not has(Pb)") == [1, 4]
    assert rows("has(Ti) or has(Cl)") == [0, 2, 3]
    assert rows("n_elements <= 3 and not n_elements == 2") == [0, 1, 2]
    assert rows('formula == "TiSrO3"') == [0]  # compositions compare, not spellings
    assert rows('formula == "Sr2Ti2O6" or "NaCl" == formula') == [0, 3]
    assert rows('formula != "SrTiO3" and status == 0') == [1, 2, 4]
    assert rows("novel and group_size >= 2") == [0, 4]
    assert rows("known or flags == 1") == [1]
    assert rows("not (novel and heat_ref < 0)") == [1, 2, 3]
    assert rows("not not has(O)") == [0, 1, 2, 4]


def test_terms_on_groups_are_told_apart_from_row_terms() -> None:
    w = Where("novel and heat_ref < 0 and group_size >= 2 and has(O)", COLUMNS)
    assert w.on_groups and w.names >= {"novel", "group_size", "heat_ref", "formula"}
    rows_only = w.row_terms()
    assert rows_only is not None and not rows_only.on_groups
    assert rows_only.evaluate(ROWS.__getitem__).tolist() == [True, False, False, False, True]
    assert Where("novel or heat_ref < 0", COLUMNS).row_terms() is None
    assert not Where("has(Fe)", COLUMNS).on_groups


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os').system('touch x')", "cannot read"),
    ("__import__", "no column '__import__'"),
    ("heat_ref < 1; import os", "cannot read"),
    ("gap < 1", "no column 'gap'"),
    ("heat_ref <", "expected a number"),
    ("heat_ref < 1 and", "expected a column"),
    ("(status == 0", "expected ')'"),
    ("has(Xx)", "'Xx' is not an element"),
    ('formula < "SrTiO3"', "compare formulas with == or !="),
    ('formula == "Sr(TiO3)"', "not a formula"),
    ('formula == "SrQq3"', "'Qq' is not an element"),
    ("", "empty expression"),
])
def test_bad_texts_are_one_line_naming_the_setting(text: str, message: str) -> None:
    with pytest.raises(SettingError) as err:
        Where(text, COLUMNS)
    assert str(err.value).startswith("where") and message in str(err.value)
    assert err.value.render({"where": "--where"}).startswith("--where")
    assert "\n" not in str(err.value)


def test_hostile_sizes_are_bounded_not_recursion_errors() -> None:
    """500 nested parentheses, a 1,000-term or, a 100 kB text: one line each, and the bounds
    themselves parse and evaluate (the evaluation's depth is the parentheses', not the terms')."""
    deep = "(" * 500 + "status == 0" + ")" * 500
    wide = " or ".join(["status == 0"] * 1000)
    many = " or ".join(["novel"] * (MAX_TERMS + 1))
    for text, what in [(deep, "nested deeper"), ("not " * 500 + "has(O)", "nested deeper"),
                       (wide, "longer than"), (many, f"more than {MAX_TERMS} terms"),
                       ("x" * 100_000, "longer than")]:
        with pytest.raises(SettingError, match=what):
            Where(text, COLUMNS)
    ok_deep = "(" * MAX_DEPTH + "status == 0" + ")" * MAX_DEPTH
    ok_wide = " or ".join(["heat_ref<0"] * MAX_TERMS)
    assert len(ok_wide) <= MAX_TEXT
    assert rows(ok_deep) == [0, 1, 2, 4] and rows(ok_wide) == [0, 4]
    with pytest.raises(SettingError) as err:
        Where("x" * 100_000, COLUMNS)
    assert len(str(err.value)) < 200  # the text is quoted short


def test_canonical_formulas() -> None:
    assert canonical_formula("TiSrO3") == canonical_formula("Sr2Ti2O6") == "SrTiO3"
    assert canonical_formula("ClNa") == "NaCl"
    for bad in ["", "sr", "Sr(O)", "SrXx"]:
        with pytest.raises(ValueError):
            canonical_formula(bad)
