"""Claims: typed records of one comparison between our numbers and a paper's, recorded where computed.

A `ClaimSpec` says what is compared, its kind (`paper`: a statement or number of one of the two papers;
`extension`: our own addition; `sanity`: a check that the set-up works), the paper's value and where it
comes from, the unit, and an explicit `rule` over the statistics of our values (`mean >= 0.6`,
`abs(mean - paper) <= 5`). A notebook run calls `record(spec, value)` once per claim and seed; the rows
land in `$REPRO_RESULTS/claims/<notebook>.json`. `aggregate` turns the rows of several seeds into one
`Claim` per id (mean ± sd, n, per-seed values, "holds in k of n seeds"); the runner writes those into
`summary.json`, which validates against `schemas/summary.schema.json`. `record_metrics` stores other
numbers of a run the same way. Every file is written atomically under a lock (`atomic_update`), so
parallel jobs never lose or corrupt a row.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .runtime import atomic_write, file_lock, notebook_name, results_dir

KINDS = ("paper", "extension", "sanity")


@dataclass(frozen=True)
class Paper:
    """The paper's side of a claim: a number (or a short statement where the paper gives none) and its source."""
    value: float | str | None
    source: str  # e.g. "GS paper, Sec. 5.2 (VGG-9 A64 on CIFAR-10)" or "MU authors' results file ..."


@dataclass(frozen=True)
class ClaimSpec:
    """What one claim compares and how it is decided. Defined once, in the notebook that measures it."""
    id: str
    kind: str
    what: str
    paper: Paper
    unit: str
    rule: str  # evaluated over mean, sd, n, min, max (our values) and paper (the paper's number)
    data: str  # which data source, e.g. "MNIST (offline copy of the original)"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind={self.kind!r} is not one of {KINDS}.")
        if not self.paper.source.strip():
            raise ValueError(f"claim {self.id}: the paper value needs a source (paper section, table or file).")
        if self.kind == "paper" and self.paper.value is None:
            raise ValueError(f"claim {self.id}: a 'paper' claim needs the paper's value or statement.")
        evaluate_rule(self.rule, Stats.of([1.0], [0]), self.paper.value)  # fails now on a malformed rule


@dataclass
class Stats:
    """Our side: the values of n seeds and their summary."""
    mean: float
    sd: float
    n: int
    values: list[float]
    seeds: list[int]

    @classmethod
    def of(cls, values: list[float], seeds: list[int]) -> "Stats":
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            return cls(mean=math.nan, sd=math.nan, n=len(values), values=values, seeds=list(seeds))
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean=statistics.fmean(values), sd=sd, n=len(values), values=values, seeds=list(seeds))


@dataclass
class Claim:
    """One aggregated claim as it appears in summary.json, summary.md and the README."""
    id: str
    kind: str
    what: str
    paper: Paper
    unit: str
    rule: str
    ours: Stats
    holds: bool
    holds_seeds: int  # in how many of the n seeds the rule holds for that seed's value alone
    profile: str
    data: str
    notebook: str

    @classmethod
    def from_dict(cls, d: dict) -> "Claim":
        return cls(**{**d, "paper": Paper(**d["paper"]), "ours": Stats(**d["ours"])})


# --- rules: a small, safe expression language -------------------------------------------------------------
_OPS: dict[type, Callable] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.USub: operator.neg, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FUNCS = {"abs": abs, "min": min, "max": max}


def evaluate_rule(rule: str, ours: Stats, paper: Any) -> bool:
    """Evaluate `rule` (e.g. "mean >= 0.6 and max <= 1") with mean, sd, n, min, max of our values and `paper`."""
    names = {"mean": ours.mean, "sd": ours.sd, "n": ours.n, "min": min(ours.values), "max": max(ours.values),
             "paper": paper if isinstance(paper, (int, float)) else math.nan}
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"rule {rule!r} is not an expression: {e.msg}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left, ok = ev(node.left), True
            for op, right in zip(node.ops, node.comparators):
                right = ev(right)
                ok = ok and _OPS[type(op)](left, right)
                left = right
            return ok
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and not node.keywords):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"rule {rule!r}: {ast.unparse(node)!r} is not allowed (use mean, sd, n, min, max, paper, "
                         f"numbers, + - * /, comparisons, and/or, abs/min/max)")
    return bool(ev(tree))


# --- files: atomic, locked read-modify-write ---------------------------------------------------------------
def read_json(path: Path) -> dict:
    """A JSON object file, or {} if it is missing; a corrupt file raises a ValueError naming it."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun the notebook that writes it.") from None


def atomic_update(path: Path, key: str, row: Any) -> None:
    """Set `key` to `row` in the JSON object stored at `path`, under a lock, atomically."""
    with file_lock(path):
        try:
            rows = read_json(path)
        except ValueError:
            rows = {}  # a corrupt file left by a killed writer of an older version: start it again
        rows[key] = row
        atomic_write(path, json.dumps(rows, indent=1, default=float))


# --- recording and aggregating -----------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def record(spec: ClaimSpec, value: float, *, seed: int, profile: str) -> dict:
    """Record our value of `spec` for one seed; print a one-line verdict for that seed alone; return the row."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"claim {spec.id}: value must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    holds = math.isfinite(value) and evaluate_rule(spec.rule, Stats.of([value], [seed]), spec.paper.value)
    row = {**asdict(spec), "value": value, "seed": int(seed), "profile": profile, "notebook": notebook_name(),
           "holds": holds}
    atomic_update(results_dir() / "claims" / f"{notebook_name()}.json", spec.id, row)
    print(f"[claim] {spec.id} ({spec.kind}): ours {_fmt(value)} {spec.unit} | paper {_fmt(spec.paper.value)} | "
          f"rule {spec.rule} -> {'holds' if holds else 'DOES NOT HOLD'} (seed {seed})")
    return row


def aggregate(rows: list[dict]) -> list[Claim]:
    """One `Claim` per id from per-seed rows (as written by `record`), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["id"], []).append(row)
    claims = []
    for cid, group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        first = group[0]
        ours = Stats.of([r["value"] for r in group], [r["seed"] for r in group])
        finite = all(math.isfinite(v) for v in ours.values)
        holds = finite and evaluate_rule(first["rule"], ours, first["paper"]["value"])
        claims.append(Claim(id=cid, kind=first["kind"], what=first["what"], paper=Paper(**first["paper"]),
                            unit=first["unit"], rule=first["rule"], ours=ours, holds=holds,
                            holds_seeds=sum(bool(r["holds"]) for r in group), profile=first["profile"],
                            data=first["data"], notebook=first["notebook"]))
    return claims


def record_metrics(**metrics: Any) -> None:
    """Store named numbers of the running notebook (merged into its metrics file)."""
    for key, value in metrics.items():
        atomic_update(results_dir() / "metrics" / f"{notebook_name()}.json", key, value)


def as_dict(claim: Claim) -> dict:
    return asdict(claim)


def markdown_tables(claims: list[Claim]) -> str:
    """The claims as three markdown tables: paper claims, extensions, sanity checks."""
    out = []
    for kind, title in (("paper", "Paper claims"), ("extension", "Extensions (ours)"), ("sanity", "Sanity checks")):
        rows = [c for c in claims if c.kind == kind]
        if not rows:
            continue
        out += [f"### {title}", "", "| claim | paper (source) | rule | ours: mean ± sd (n) | holds |",
                "|---|---|---|---|---|"]
        for c in rows:
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731 — a bare | would split the cell
            ours = f"{c.ours.mean:.4g} ± {c.ours.sd:.2g} {c.unit} ({c.ours.n})"
            verdict = ("yes" if c.holds else "**no**") + f" ({c.holds_seeds} of {c.ours.n} seeds)"
            out.append(f"| `{c.id}` — {cell(c.what)} | {cell(_fmt(c.paper.value))} ({cell(c.paper.source)}) | "
                       f"`{cell(c.rule)}` | {ours} | {verdict} |")
        out.append("")
    return "\n".join(out)
