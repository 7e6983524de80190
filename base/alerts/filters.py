"""A safe filter language over alert fields (DMS-REQ-0342/0343/0348). Never ``eval``.

Grammar (a Python-expression subset, parsed with :mod:`ast` and checked node by node):

    expr    := expr ("and" | "or") expr | "not" expr | cmp
    cmp     := arith (("<" | "<=" | ">" | ">=" | "==" | "!=") arith)+
             | arith ["not"] "in" "(" literal, ... ")"
    arith   := arith ("+" | "-" | "*" | "/") arith | "-" arith | "(" expr ")"
             | call | field | literal
    call    := abs(x) | sqrt(x) | log10(x) | mag(x) | min(x, y) | max(x, y) | isnull(field)
    field   := diaSource.NAME | diaObject.NAME | ssSource.NAME | NAME  (bare NAME = diaSource.NAME)
    literal := number | 'string' | True | False

Field names and types are checked against the installed Rubin alert schema when the filter is
compiled, with the nearest valid name suggested. A compiled filter evaluates either one decoded
alert (a dict) or a whole visit at once (columns "diaSource.snr" -> numpy array), because every
operation is a numpy ufunc; comparisons with a null (NaN) are false. ``mag`` is the AB
magnitude of a flux in nJy.
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from algorithms.association import Columns
from state.errors import InvalidInputError

from .schema import AlertSchema, latest_schema

MAX_LENGTH = 2000
MAX_NODES = 300
#: Largest magnitude of a number in a filter (the 64-bit range of the alert ids).
MAX_LITERAL = 2**63 - 1
RECORDS = ("diaSource", "diaObject", "ssSource")

Getter = Callable[[str], Any]
Node = Callable[[Getter], Any]


class FilterError(InvalidInputError):
    """A filter expression that is not valid in the filter language."""


def _mag(flux: Any) -> Any:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 31.4 - 2.5 * np.log10(flux)  # AB: 0 mag = 3631 Jy = 10**(31.4/2.5) nJy


_FUNCS: dict[str, tuple[int, Callable[..., Any]]] = {
    "abs": (1, np.abs),
    "sqrt": (1, np.sqrt),
    "log10": (1, np.log10),
    "mag": (1, _mag),
    "min": (2, np.fmin),
    "max": (2, np.fmax),
}
_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
}


@dataclass(frozen=True)
class AlertFilter:
    """A compiled filter; call :meth:`mask` on a visit's columns or :meth:`matches` on one alert."""

    expression: str
    fields: frozenset[str]
    _root: Node

    def mask(self, table: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Boolean mask over the ``n`` alerts of a visit table from :func:`alert_table`."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._root(table.__getitem__)
        return np.broadcast_to(np.asarray(out, dtype=bool), (n,))

    def matches(self, alert: Mapping[str, Any]) -> bool:
        """Whether one decoded alert passes."""

        def get(name: str) -> Any:
            rec, field = name.split(".", 1)
            sub = alert.get(rec)
            value = sub.get(field) if sub else None
            return math.nan if value is None else value

        with np.errstate(invalid="ignore", divide="ignore"):
            return bool(self._root(get))


class _Compiler:
    def __init__(self, text: str, schema: AlertSchema) -> None:
        self.text = text
        self.types = {f"{rec}.{f.name}": f.type for rec in RECORDS for f in schema.fields(rec)}
        self.used: set[str] = set()

    def fail(self, node: ast.AST | None, message: str) -> FilterError:
        where = (
            f" at column {node.col_offset + 1}"
            if node is not None and hasattr(node, "col_offset")
            else ""
        )
        return FilterError(f"invalid filter{where}: {message}")

    def field(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return f"diaSource.{node.id}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in RECORDS
        ):
            return f"{node.value.id}.{node.attr}"
        return None

    def kind(self, t: str) -> str:
        return {"string": "str", "boolean": "bool"}.get(t, "num")

    def compile(self, node: ast.AST) -> tuple[Node, str]:
        """Return (evaluator, kind) with kind in num/str/bool."""
        if isinstance(node, ast.BoolOp):
            parts = [self.expect(v, "bool") for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

            def boolop(get: Getter) -> Any:
                acc = parts[0](get)
                for p in parts[1:]:
                    acc = op(acc, p(get))
                return acc

            return boolop, "bool"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                inner = self.expect(node.operand, "bool")
                return (lambda get: np.logical_not(inner(get))), "bool"
            if isinstance(node.op, ast.USub):
                inner = self.expect(node.operand, "num")
                return (lambda get: np.negative(_float(inner(get)))), "num"
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.Compare):
            return self.compare(node), "bool"
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITH:
                raise self.fail(node, "only + - * / are allowed in arithmetic")
            fn = _ARITH[type(node.op)]
            left, right = self.expect(node.left, "num"), self.expect(node.right, "num")
            return (lambda get: fn(_float(left(get)), _float(right(get)))), "num"
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return (lambda get: v), "bool"
            if isinstance(v, int | float):
                number = self.number(node, v)
                return (lambda get: number), "num"
            if isinstance(v, str):
                return (lambda get: v), "str"
            raise self.fail(node, f"literal {v!r} is not allowed")
        name = self.field(node)
        if name is not None:
            if name not in self.types:
                raise self.fail(node, self.unknown(name))
            self.used.add(name)
            return (lambda get: get(name)), self.kind(self.types[name])
        raise self.fail(node, f"{type(node).__name__} is not part of the filter language")

    def number(self, node: ast.AST, value: float) -> float:
        """A numeric literal, refused unless it is finite and within ±MAX_LITERAL."""
        finite = isinstance(value, int) or math.isfinite(value)
        if not (finite and -MAX_LITERAL <= value <= MAX_LITERAL):
            raise self.fail(node, f"number out of range (at most {MAX_LITERAL:.0e} in magnitude)")
        return value

    def unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.types), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{name}'{hint}"

    def expect(self, node: ast.AST, kind: str) -> Node:
        fn, got = self.compile(node)
        if got != kind:
            raise self.fail(node, f"expected a {kind} expression, got {got}")
        return fn

    def compare(self, node: ast.Compare) -> Node:
        if len(node.ops) == 1 and isinstance(node.ops[0], ast.In | ast.NotIn):
            return self.membership(node)
        parts: list[Node] = []
        left, lkind = self.compile(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _CMP:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed here")
            right, rkind = self.compile(comparator)
            if lkind != rkind:
                raise self.fail(comparator, f"cannot compare a {lkind} with a {rkind}")
            if lkind != "num" and not isinstance(op, ast.Eq | ast.NotEq):
                raise self.fail(comparator, f"only == and != apply to {lkind} values")
            fn = _CMP[type(op)]
            parts.append(lambda get, f=fn, a=left, b=right: f(a(get), b(get)))
            left, lkind = right, rkind
        if len(parts) == 1:
            return parts[0]

        def chained(get: Getter) -> Any:
            acc = parts[0](get)
            for p in parts[1:]:
                acc = np.logical_and(acc, p(get))
            return acc

        return chained

    def membership(self, node: ast.Compare) -> Node:
        left, kind = self.compile(node.left)
        seq = node.comparators[0]
        if not isinstance(seq, ast.Tuple | ast.List) or not all(
            isinstance(e, ast.Constant) for e in seq.elts
        ):
            raise self.fail(seq, "'in' needs a parenthesised list of literals")
        values = [
            self.number(e, e.value)  # type: ignore[attr-defined]
            if isinstance(e.value, int | float) and not isinstance(e.value, bool)  # type: ignore[attr-defined]
            else e.value  # type: ignore[attr-defined]
            for e in seq.elts
        ]
        negate = isinstance(node.ops[0], ast.NotIn)

        def member(get: Getter) -> Any:
            x = left(get)
            hit = np.isin(x, values) if isinstance(x, np.ndarray) else x in values
            return np.logical_not(hit) if negate else hit

        del kind
        return member

    def call(self, node: ast.Call) -> tuple[Node, str]:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(node, "only plain calls of the built-in functions are allowed")
        name = node.func.id
        if name == "isnull":
            field = self.field(node.args[0]) if len(node.args) == 1 else None
            if field is None or field not in self.types:
                raise self.fail(node, "isnull() takes one field name")
            self.used.add(field)
            return (lambda get: _isnull(get(field), field)), "bool"
        if name not in _FUNCS:
            raise self.fail(
                node, f"unknown function '{name}'; allowed: {', '.join([*_FUNCS, 'isnull'])}"
            )
        arity, fn = _FUNCS[name]
        if len(node.args) != arity:
            raise self.fail(node, f"{name}() takes {arity} argument(s), got {len(node.args)}")
        args = [self.expect(a, "num") for a in node.args]
        return (lambda get: fn(*(a(get) for a in args))), "num"


def _float(value: Any) -> Any:
    """Arithmetic runs in float64: a product too large becomes inf, never an OverflowError."""
    return np.asarray(value, dtype=np.float64)


def _isnull(value: Any, field: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return np.isnan(value)
        if value.dtype.kind in "iu":
            return value == 0 if field.endswith("Id") else np.zeros(value.shape, dtype=bool)
        if value.dtype.kind == "b":
            return np.zeros(value.shape, dtype=bool)
        return np.array([v is None or v == "" for v in value], dtype=bool)
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or value == ""


def compile_filter(expression: str, schema: AlertSchema | None = None) -> AlertFilter:
    """Parse and check ``expression``; raise :class:`FilterError` with a clear message."""
    if not isinstance(expression, str) or not expression.strip():
        raise FilterError("invalid filter: the expression is empty")
    if len(expression) > MAX_LENGTH:
        raise FilterError(f"invalid filter: longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise FilterError(
            f"invalid filter at column {e.offset or 0}: syntax error ({e.msg})"
        ) from e
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise FilterError(f"invalid filter: more than {MAX_NODES} syntax nodes")
    comp = _Compiler(expression, schema or latest_schema())
    root = comp.expect(tree.body, "bool")
    return AlertFilter(expression, frozenset(comp.used), root)


#: Filters every user can subscribe to by name.
PREDEFINED: dict[str, str] = {
    "all_bright": "diaSource.snr >= 20 and not diaSource.isNegative",
    "new_objects": "diaObject.nDiaSources == 1",
    "high_reliability": "diaSource.reliability >= 0.9 and diaSource.snr >= 10",
    "moving_objects": "not isnull(ssSource.ssObjectId)",
    "brightening_r": "diaSource.band == 'r' and diaObject.r_psfFluxMaxSlope > 1000",
    "bright_point_sources": "mag(abs(diaSource.psfFlux)) < 19 and diaSource.extendedness < 0.5",
}


def predefined(name: str, schema: AlertSchema | None = None) -> AlertFilter:
    if name not in PREDEFINED:
        raise FilterError(f"no predefined filter '{name}'; known: {', '.join(sorted(PREDEFINED))}")
    return compile_filter(PREDEFINED[name], schema)


def alert_table(
    sources: Columns, objects: Columns | None = None, ss_sources: Columns | None = None
) -> dict[str, np.ndarray]:
    """A visit's alerts as filter columns: "diaSource.x", plus DIAObject/SSSource fields aligned
    to each DIASource by id (NaN / 0 / None where the alert has none)."""
    n = len(sources["diaSourceId"])
    table = {f"diaSource.{k}": np.asarray(v) for k, v in sources.items()}
    for rec, cols, key_src, key_cat in (
        ("diaObject", objects, "diaObjectId", "diaObjectId"),
        ("ssSource", ss_sources, "diaSourceId", "diaSourceId"),
    ):
        if not cols or len(cols.get(key_cat, ())) == 0:
            continue
        cat_ids = np.asarray(cols[key_cat], dtype=np.int64)
        order = np.argsort(cat_ids)
        want = np.asarray(sources[key_src], dtype=np.int64)
        pos = np.clip(np.searchsorted(cat_ids[order], want), 0, len(order) - 1)
        row = order[pos]
        hit = (cat_ids[row] == want) & (want != 0)
        for k, values in cols.items():
            v = np.asarray(values)
            if v.dtype.kind == "f":
                col = np.where(hit, v[row], np.nan)
            elif v.dtype.kind in "iub":
                col = np.where(hit, v[row], 0).astype(v.dtype)
            else:
                col = np.where(hit, v[row], None)
            table[f"{rec}.{k}"] = col
    return _MissingAsNull(table, n)


def decoded_table(
    alerts: Sequence[Mapping[str, Any]], schema: AlertSchema | None = None
) -> dict[str, np.ndarray]:
    """Filter columns from decoded alerts (an archive replay), as :func:`alert_table` makes
    them from the hand-off: an Avro null is NaN in a float column, 0 in an integer ``...Id``
    (the in-memory "no association"), False in a boolean and None in a string column."""
    schema = schema or latest_schema()
    n = len(alerts)
    table: dict[str, np.ndarray] = {}
    for rec in RECORDS:
        records = [a.get(rec) or {} for a in alerts]
        if not any(records):
            continue
        for f in schema.fields(rec):
            values = [r.get(f.name) for r in records]
            table[f"{rec}.{f.name}"] = _column(values, f.type, f.name)
    return _MissingAsNull(table, n)


def _column(values: list[Any], avro_type: str, name: str) -> np.ndarray:
    if avro_type in ("double", "float"):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if avro_type in ("long", "int"):
        if None in values and not name.endswith("Id"):
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.array([0 if v is None else v for v in values], dtype=np.int64)
    if avro_type == "boolean":
        return np.array([bool(v) for v in values], dtype=bool)
    if avro_type == "string" and None not in values:
        return np.array(values, dtype=str)
    return np.array(values, dtype=object)


def filter_table(columns: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Columns from :func:`alert_table` (e.g. after a trip through Ray) ready for ``mask``."""
    return _MissingAsNull({k: np.asarray(v) for k, v in columns.items()}, n)


class _MissingAsNull(dict):
    """A visit table where a field no alert carries reads as all-null (NaN)."""

    def __init__(self, table: dict[str, np.ndarray], n: int) -> None:
        super().__init__(table)
        self.n = n

    def __missing__(self, key: str) -> np.ndarray:
        return np.full(self.n, np.nan)
