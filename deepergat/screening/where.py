"""``where`` expressions: which rows of a predictions file a short list keeps.

The language, parsed here by a small recursive-descent parser and never evaluated as Python:

* comparisons of a column with a number, either way round: ``heat_ref < 0.2``,
  ``0.05 >= heat_ref_std``; columns are the targets, ``<target>_std`` (an ensemble's spread),
  ``status``, ``flags``, ``n_elements`` (distinct elements) and ``group_size`` (structures of
  the row's group among the rows examined);
* composition: ``has(Fe)`` (an element present), ``formula == "SrTiO3"`` (the reduced
  formula: ``"TiSrO3"`` and ``"Sr2Ti2O6"`` mean the same), ``formula != "..."``;
* novelty: ``novel`` (no known structure matches the row's group), ``known``;
* ``not``, ``and``, ``or`` (binding in that order, tightest first) and parentheses.

A row with NaN in a compared column never matches. Terms on groups (``group_size``, ``novel``,
``known``) hold for a group's best-ranked member. Bounds (`MAX_TEXT`, `MAX_DEPTH`, `MAX_TERMS`)
keep a hostile text from costing more than a fixed amount: it is one line, not a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from deepergat.elements import atomic_number, formula
from deepergat.errors import SettingError, literal

__all__ = [
    "GROUP_COLUMNS",
    "MAX_DEPTH",
    "MAX_TERMS",
    "MAX_TEXT",
    "Where",
    "canonical_formula",
    "comparable_columns",
]

#: Longest ``where`` text, in characters.
MAX_TEXT = 4000
#: Deepest nesting of parentheses and ``not``.
MAX_DEPTH = 32
#: Most terms (comparisons, ``has``, ``novel``/``known``) in one expression.
MAX_TERMS = 256
#: Names whose values belong to a row's group: known only once rows are grouped and matched.
GROUP_COLUMNS = ("group_size", "novel", "known")

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<op><=|>=|==|!=|<|>)|(?P<paren>[()])|(?P<str>\"[^\"]*\"|'[^']*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal,
}
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_WORDS = ("and", "or", "not")
_WHAT = {"num": "number", "op": "comparison (< <= > >= == !=)", "name": "column name",
         "paren": "parenthesis", "str": "quoted formula", "word": "and/or/not"}
_FORMULA_PART = re.compile(r"([A-Z][a-z]?)(\d*)")

#: A parsed expression: ("cmp", column, op, number) | ("formula", op, formula) |
#: ("has", Z) | ("novel",) | ("known",) | ("not", node) | ("and" | "or", [nodes]).
Node = tuple[Any, ...]


def canonical_formula(text: str) -> str:
    """A formula as the predictions file writes it (reduced, elements in pymatgen's order):
    ``"TiSrO3"`` and ``"Sr2Ti2O6"`` → ``"SrTiO3"``.

    Raises:
        ValueError: not element symbols with optional counts.
    """
    parts = _FORMULA_PART.findall(text)
    if not text or "".join(s + n for s, n in parts) != text:
        raise ValueError(f"not a formula: {text!r} (element symbols with counts, e.g. SrTiO3)")
    zs: list[int] = []
    for sym, count in parts:
        z = atomic_number(sym)
        if not z:
            raise ValueError(f"{sym!r} is not an element")
        zs.extend([z] * (int(count) if count else 1))
    return formula(zs)


@lru_cache(maxsize=1 << 16)
def _elements(name: str) -> frozenset[int]:
    """The elements of a reduced formula as written in the file (cached: few distinct)."""
    return frozenset(atomic_number(s) for s, _ in _FORMULA_PART.findall(name))


class _Parser:
    """Recursive descent over the tokens: ``or`` of ``and`` of (``not``) terms."""

    def __init__(self, where: Where) -> None:
        self.where = where
        self.tokens = _tokens(where.text)
        self.pos = 0
        self.depth = 0
        self.terms = 0

    def fail(self, problem: str) -> SettingError:
        return self.where.error(problem)

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            got = "the end" if tok is None else repr(tok[1])
            want = repr(value) if value is not None else f"a {_WHAT[kind]}"
            raise self.fail(f"expected {want}, got {got}")
        self.pos += 1
        return tok[1]

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} parentheses or nots")

    def disjunction(self) -> Node:
        nodes = [self.conjunction()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            nodes.append(self.conjunction())
        return nodes[0] if len(nodes) == 1 else ("or", nodes)

    def conjunction(self) -> Node:
        nodes = [self.unary()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            nodes.append(self.unary())
        return nodes[0] if len(nodes) == 1 else ("and", nodes)

    def unary(self) -> Node:
        if self.peek() == ("word", "not"):
            self.pos += 1
            self.nested()
            node = ("not", self.unary())
            self.depth -= 1
            return node
        return self.term()

    def term(self) -> Node:
        tok = self.peek()
        if tok == ("paren", "("):
            self.pos += 1
            self.nested()
            node = self.disjunction()
            self.take("paren", ")")
            self.depth -= 1
            return node
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.fail(f"more than {MAX_TERMS} terms")
        if tok is not None and tok[0] == "num":
            number = float(self.take("num"))
            op = self.take("op")
            return ("cmp", self.column(self.take("name")), _MIRROR[op], number)
        if tok is not None and tok[0] == "str":
            text = self.take("str")
            op = self.take("op")
            self.take("name", "formula")
            return self.formula(_MIRROR[op], text)
        name = self.take("name")
        if name in ("novel", "known"):
            return (name,)
        if name == "has":
            self.take("paren", "(")
            sym = self.take("name")
            self.take("paren", ")")
            z = atomic_number(sym)
            if not z:
                raise self.fail(f"has({sym}): {sym!r} is not an element symbol")
            return ("has", z)
        if name == "formula":
            op = self.take("op")
            return self.formula(op, self.take("str"))
        column = self.column(name)
        op = self.take("op")
        return ("cmp", column, op, float(self.take("num")))

    def formula(self, op: str, quoted: str) -> Node:
        if op not in ("==", "!="):
            raise self.fail(f"formula {op}: compare formulas with == or !=")
        try:
            return ("formula", op, canonical_formula(quoted[1:-1]))
        except ValueError as e:
            raise self.fail(str(e)) from None

    def column(self, name: str) -> str:
        if name not in self.where.columns:
            raise self.fail(f"no column {name!r}; columns: {', '.join(self.where.columns)}, "
                            "and has(El), formula, novel, known")
        return name


def _shown(text: str, limit: int = 80) -> str:
    """The expression as a message quotes it (shortened)."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SettingError(f"{{where}} {literal(_shown(text))}: cannot read "
                               f"{literal(repr(text[pos:pos + 20]))} (columns, numbers, "
                               "< <= > >= == !=, has(El), formula == \"...\", novel, known, "
                               "and, or, not, parentheses)")
        kind = m.lastgroup or ""
        value = m.group(kind).strip()
        if kind == "name" and value.lower() in _WORDS:
            kind, value = "word", value.lower()
        out.append((kind, value))
        pos = m.end()
    return out


@dataclass(frozen=True)
class Where:
    """A parsed ``where`` expression over a predictions file's columns.

    Args:
        text: the expression.
        columns: the file's comparable columns (targets, ``<target>_std``, ``status``,
            ``flags``, ``n_elements``, ``group_size``).

    Raises:
        SettingError: too long or deep, a syntax error, an unknown column or element.
    """

    text: str
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.text) > MAX_TEXT:
            raise self.error(f"longer than {MAX_TEXT} characters")
        parser = _Parser(self)
        if not parser.tokens:
            raise SettingError("{where}: empty expression")
        tree = parser.disjunction()
        if parser.pos != len(parser.tokens):
            raise self.error(f"unexpected {parser.tokens[parser.pos][1]!r}")
        object.__setattr__(self, "tree", tree)

    tree: Node = field(default=(), init=False, compare=False)  # set by __post_init__

    def error(self, problem: str) -> SettingError:
        return SettingError(f"{{where}} {literal(_shown(self.text))}: {literal(problem)}")

    @property
    def names(self) -> set[str]:
        """The columns and words the expression uses (``has``, ``formula``, ``novel``, …)."""
        found: set[str] = set()
        _collect(self.tree, found)
        return found

    @property
    def on_groups(self) -> bool:
        """It uses a term on groups (`GROUP_COLUMNS`)."""
        return bool(self.names & set(GROUP_COLUMNS))

    def row_terms(self) -> Where | None:
        """The part that a row alone decides and that every kept row must pass: the top-level
        ``and`` terms without a term on groups (None when there are none). Rows failing it
        need not be grouped at all."""
        parts = list(self.tree[1]) if self.tree[0] == "and" else [self.tree]
        rows = [p for p in parts if not (_names(p) & set(GROUP_COLUMNS))]
        if not rows:
            return None
        tree = rows[0] if len(rows) == 1 else ("and", rows)
        out = object.__new__(Where)
        object.__setattr__(out, "text", self.text)
        object.__setattr__(out, "columns", self.columns)
        object.__setattr__(out, "tree", tree)
        return out

    def evaluate(self, read: Callable[[str], Any]) -> np.ndarray:
        """[n] bool: the rows where the expression holds.

        Args:
            read: column name (or ``"formula"``, ``"novel"``, ``"known"``) → [n] values
                (formulas as strings, novel/known as bool).
        """
        return _evaluate(self.tree, read)


def _names(node: Node) -> set[str]:
    found: set[str] = set()
    _collect(node, found)
    return found


def _collect(node: Node, found: set[str]) -> None:
    kind = node[0]
    if kind in ("and", "or"):
        for child in node[1]:
            _collect(child, found)
    elif kind == "not":
        _collect(node[1], found)
    elif kind == "cmp":
        found.add(node[1])
    elif kind in ("has", "formula"):
        found.update(("formula", kind))
    else:
        found.add(kind)


def _evaluate(node: Node, read: Callable[[str], Any]) -> np.ndarray:
    kind = node[0]
    if kind == "cmp":
        values = np.asarray(read(node[1])).astype(np.float64)
        with np.errstate(invalid="ignore"):
            return _OPS[node[2]](values, node[3]) & ~np.isnan(values)
    if kind == "formula":
        names = np.asarray(read("formula"), dtype=object)
        same = names == node[2]
        return same if node[1] == "==" else ~same
    if kind == "has":
        names = read("formula")
        return np.fromiter((node[1] in _elements(str(n)) for n in names), bool, len(names))
    if kind in ("novel", "known"):
        return np.asarray(read(kind), dtype=bool)
    if kind == "not":
        return ~_evaluate(node[1], read)
    results = [_evaluate(child, read) for child in node[1]]
    return np.logical_and.reduce(results) if kind == "and" else np.logical_or.reduce(results)


def comparable_columns(targets: Sequence[str], *, spread: bool) -> tuple[str, ...]:
    """The numeric columns of a predictions file's ``where`` (`Where.columns`)."""
    return (*targets, *(f"{t}_std" for t in targets if spread), "status", "flags",
            "n_elements", "group_size")

