"""The predictor's training target: an arithmetic expression over the store's metric columns (paper §3.3: the target
−FID − λ·avg_bits; code.md §5 "Targets").

The released code substituted the dataset's keys into the expression string and called `eval`. Here the text is
parsed with `ast` and compiled, node by node, from a whitelist (numbers, metric columns, named constants, unary
+/−, binary + − * / **, and a few numpy functions) into a vectorised evaluator; nothing is ever eval'd, exec'd or
compiled to code. Targets are "higher is better".
"""

from __future__ import annotations

import ast
import copy
import hashlib
import io
import keyword
import math
import re
import tokenize
from collections.abc import Callable, Mapping
from numbers import Real
from types import MappingProxyType

import numpy as np
import pandas as pd

from qsd.errors import InvalidSettingError, closest_names
from qsd.store import METRICS

FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.log, "log10": np.log10, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
MAX_LENGTH = 500
MAX_DEPTH = 64
PAPER_TARGET = "-fid - lambda * avg_bits"
_UNARY = {ast.UAdd: np.positive, ast.USub: np.negative}
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power}
_SLUG_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "over", "**": "pow", "(": "lp", ")": "rp"}
_SLUG_UNARY = {"+": "pos", "-": "neg"}
_MAX_SLUG = 120
ALLOWED = ("numbers, the metric columns (" + ", ".join(METRICS) + "), the given constants, unary + -, "
           "binary + - * / **, and the functions " + ", ".join(FUNCTIONS))

Values = Mapping[str, np.ndarray]
Evaluator = Callable[[Values], np.ndarray | float]

TARGETS = ("paper", "fid")
"""The predictor's two targets: the paper's equation (−FID − λ·avg_bits by default, §3.3) and FID alone."""
FID_ONLY = "-fid"


def named_targets(equation: str, lambda_bits: float) -> dict[str, TargetExpression]:
    """`TARGETS` by name: 'paper' is `equation` with `lambda` = `lambda_bits`, 'fid' is −FID."""
    return {"paper": TargetExpression(equation, {"lambda": lambda_bits}), "fid": TargetExpression(FID_ONLY)}


class TargetExpression:
    """A target such as `TargetExpression("-fid - lambda * avg_bits", {"lambda": 10.0})`, checked on construction.

    Names are metric columns of the store (`qsd.store.METRICS`) or keys of `constants`; a constant may be a
    Python keyword (the paper's `lambda`).
    """

    def __init__(self, text: str, constants: Mapping[str, float] | None = None):
        if not isinstance(text, str) or not text.strip():
            raise InvalidSettingError(f"a target expression must be non-empty text, e.g. {PAPER_TARGET!r}; "
                                      f"got {text!r}")
        if len(text) > MAX_LENGTH:
            raise InvalidSettingError(f"target expression is {len(text)} characters long; at most {MAX_LENGTH} allowed")
        self.text = text
        self.constants = MappingProxyType(_checked_constants(constants or {}))
        tree, renamed = _parse(text, self.constants)
        if _depth(tree) > MAX_DEPTH:
            raise InvalidSettingError(f"target expression {text!r} is nested more than {MAX_DEPTH} levels deep")
        variables: list[str] = []
        self._evaluate = _compile(tree.body, self, renamed, variables)
        if not variables:
            raise InvalidSettingError(
                f"target expression {text!r} uses no metric column, so every configuration would score the same; "
                f"use at least one of {', '.join(METRICS)}")
        self.variables = tuple(dict.fromkeys(variables))
        self._canonical = ast.unparse(_substitute(tree, self.constants, renamed))

    # ------------------------------------------------------------------ evaluation
    def usable_rows(self, frame: pd.DataFrame | Mapping[str, object]) -> np.ndarray:
        """Boolean mask of the rows where every variable is present (not NaN/None)."""
        columns = self._columns(frame)
        return np.logical_and.reduce([~np.isnan(columns[v]) for v in self.variables])

    def evaluate(self, frame: pd.DataFrame | Mapping[str, object]) -> np.ndarray:
        """The target of every row of `frame` (a DataFrame or a dict of equal-length arrays), as float64."""
        columns = self._columns(frame)
        for name in self.variables:
            missing = int(np.isnan(columns[name]).sum())
            if missing:
                raise InvalidSettingError(
                    f"target {self}: column {name!r} is missing (NaN/None) in {missing} of {len(columns[name])} rows; "
                    "drop them first, e.g. frame[target.usable_rows(frame)]")
        with np.errstate(all="ignore"):
            values = np.broadcast_to(self._evaluate(columns), columns[self.variables[0]].shape).astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InvalidSettingError(
                f"target {self} is not finite in {int(bad.sum())} of {len(values)} rows (e.g. row "
                f"{int(np.argmax(bad))}: log or sqrt of a non-positive value, or a division by zero)")
        return values

    def _columns(self, frame: pd.DataFrame | Mapping[str, object]) -> dict[str, np.ndarray]:
        available = list(frame.columns) if isinstance(frame, pd.DataFrame) else list(frame)
        columns = {}
        for name in self.variables:
            if name not in available:
                raise InvalidSettingError(
                    f"target {self} needs column {name!r}, which the data lacks; "
                    f"it has {', '.join(map(str, available))}")
            columns[name] = np.asarray(pd.to_numeric(frame[name], errors="coerce"), dtype=np.float64)
        return columns

    # ------------------------------------------------------------------ naming and serialisation
    @property
    def slug(self) -> str:
        """Filesystem-safe, deterministic name (constants substituted), e.g. `neg_fid_minus_10_times_avg_bits`."""
        words, previous = [], None
        for token in tokenize.generate_tokens(io.StringIO(self._canonical).readline):
            if token.type == tokenize.NAME:
                words.append(token.string)
            elif token.type == tokenize.NUMBER:
                words.append(format(float(token.string), "g").replace("-", "m").replace("+", "").replace(".", "p"))
            elif token.type == tokenize.OP:
                unary = token.string in _SLUG_UNARY and (previous is None or previous.type == tokenize.OP
                                                         and previous.string != ")")
                words.append(_SLUG_UNARY[token.string] if unary else _SLUG_WORDS[token.string])
            previous = token if token.type in (tokenize.NAME, tokenize.NUMBER, tokenize.OP) else previous
        slug = "_".join(words)
        if len(slug) > _MAX_SLUG:
            slug = slug[:_MAX_SLUG - 9] + "_" + hashlib.sha256(slug.encode()).hexdigest()[:8]
        return slug

    def to_json(self) -> dict:
        return {"text": self.text, "constants": dict(self.constants)}

    @classmethod
    def from_json(cls, data: Mapping) -> TargetExpression:
        if not isinstance(data, Mapping) or set(data) != {"text", "constants"}:
            raise InvalidSettingError(f"a saved target is an object with keys text and constants; got {data!r}")
        return cls(data["text"], data["constants"])

    def __reduce__(self) -> tuple:  # the compiled evaluator is closures: pickle the text and rebuild
        return TargetExpression, (self.text, dict(self.constants))

    def __str__(self) -> str:
        text = " ".join(self.text.split())
        return text + (f" ({', '.join(f'{k}={v:g}' for k, v in self.constants.items())})" if self.constants else "")

    def __repr__(self) -> str:
        return f"TargetExpression({self.text!r}, {dict(self.constants)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetExpression) and (self.text, self.constants) == (other.text, other.constants)

    def __hash__(self) -> int:
        return hash((self.text, tuple(self.constants.items())))


# ---------------------------------------------------------------------- parsing and compiling
def _checked_constants(constants: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(constants, Mapping):
        raise InvalidSettingError(f"constants must be a mapping name -> number; got {type(constants).__name__}")
    checked = {}
    for name, value in sorted(constants.items()):
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidSettingError(f"constant name {name!r} is not an identifier (letters, digits, _)")
        if name in METRICS or name in FUNCTIONS:
            raise InvalidSettingError(f"constant {name!r} would shadow a metric column or function; rename it")
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise InvalidSettingError(f"constant {name!r} must be a finite number; got {value!r}")
        checked[name] = float(value)
    return checked


def _parse(text: str, constants: Mapping[str, float]) -> tuple[ast.Expression, dict[str, str]]:
    """Parse `text` as one expression; keyword-named constants (`lambda`) are renamed first. Returns the tree and
    the map renamed -> original name."""
    renamed: dict[str, str] = {}
    for name in filter(keyword.iskeyword, constants):
        alias = f"_{name}_"
        while alias in text or alias in constants:
            alias = f"_{alias}_"
        renamed[alias] = name
    aliases = {original: alias for alias, original in renamed.items()}
    source = text
    if aliases:
        source = re.sub(r"\b(" + "|".join(map(re.escape, aliases)) + r")\b", lambda m: aliases[m.group(1)], text)
    try:
        return ast.parse(source.strip(), mode="eval"), renamed
    except SyntaxError as exc:
        used = [w for w in re.findall(r"[A-Za-z_]\w*", text) if keyword.iskeyword(w)]
        hint = f"; {used[0]!r} is a Python keyword: pass it in constants to use it as a name" if used else ""
        raise InvalidSettingError(f"target expression {text!r} is not a valid expression ({exc.msg}){hint}; "
                                  f"allowed: {ALLOWED}") from None


def _depth(tree: ast.AST) -> int:
    """Levels of the syntax tree, counted without recursion (so a pathological text cannot overflow the stack)."""
    depth, level = 0, [tree]
    while level:
        depth, level = depth + 1, [child for node in level for child in ast.iter_child_nodes(node)]
    return depth


def _compile(node: ast.AST, target: TargetExpression, renamed: Mapping[str, str], variables: list[str]) -> Evaluator:
    """Check `node` against the whitelist and return its evaluator; metric names used are appended to `variables`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        value = float(node.value)
        return lambda columns: value
    if isinstance(node, ast.Name):
        name = renamed.get(node.id, node.id)
        if name in target.constants:
            value = target.constants[name]
            return lambda columns: value
        if name in METRICS:
            variables.append(name)
            return lambda columns: columns[name]
        hint = closest_names(name, [*METRICS, *target.constants, *FUNCTIONS], n=1)
        raise InvalidSettingError(
            f"target expression {target.text!r}: unknown name {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; names are metric columns ({', '.join(METRICS)}) "
            f"or constants ({', '.join(target.constants) or 'none'})")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op, operand = _UNARY[type(node.op)], _compile(node.operand, target, renamed, variables)
        return lambda columns: op(operand(columns))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = (_compile(n, target, renamed, variables) for n in (node.left, node.right))
        return lambda columns: op(left(columns), right(columns))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise InvalidSettingError(f"target expression {target.text!r}: {node.func.id}() takes exactly one argument")
        function, argument = FUNCTIONS[node.func.id], _compile(node.args[0], target, renamed, variables)
        return lambda columns: function(argument(columns))
    if isinstance(node, ast.Call):
        what = f"calling {ast.unparse(node.func)}()"
    elif isinstance(node, ast.Constant):
        what = f"the literal {node.value!r}"
    else:
        what = f"{type(node).__name__.lower()} {ast.unparse(node)!r}"
    raise InvalidSettingError(f"target expression {target.text!r}: {what} is not allowed; allowed: {ALLOWED}")


def _substitute(tree: ast.Expression, constants: Mapping[str, float], renamed: Mapping[str, str]) -> ast.Expression:
    """A copy of `tree` with every constant replaced by its value (the canonical form the slug is made from)."""

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            name = renamed.get(node.id, node.id)
            return ast.Constant(constants[name]) if name in constants else node

    return ast.fix_missing_locations(Substitute().visit(copy.deepcopy(tree)))
