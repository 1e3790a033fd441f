"""Machine unlearning of features and labels: requests, closed-form updates, baselines and certification.

Implements *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023): an unlearning
request `(Z, Z̃)` (Section 3: affected rows and their corrected versions — features zeroed, labels fixed,
tokens replaced — or no correction at all: the row is removed), the first-order update `θ − τG` and the
second-order update `θ − H⁻¹G` (Section 4, with H from the original data as in the paper or from the
corrected data, exact or Gauss-Newton curvature, any inverse-HVP solver object of `gsmu.mu.influence`,
damped, and iterative), τ chosen on held-out rows by the fidelity of Section 6, where an update lands as a
fraction of the retrain distance, the baselines of Section 6 (retraining with a warm start, fine-tuning on
Z̃, SISA sharding, occlusion) and certified unlearning for L2-regularized logistic regression (Section 5: loss
perturbation `bᵀθ`, gradient residual, the σ that certifies (ε, δ)).

Every update returns a new model (the original is untouched; `device=None` keeps it on the original's
device) and an `UpdateResult` (time, gradient evaluations — one per example whose gradient or
Hessian-vector product is evaluated — HVPs and solver statistics). `steps=k` means one thing everywhere:
the request is unlearned in k consecutive pieces, re-linearizing at the current parameters after each
(`Request.tiled(k)` with `steps=k` gives k fractional steps over every row instead). Models are used in
their current mode: call `.eval()` first for dropout/BatchNorm.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..base import train
from ..base.runtime import check_choice, check_nonempty, check_positive, get_device
from . import cost
from .influence import (CG, Batch, Curvature, Exact, LiSSA, Objective, ParamSpace, Solver, SolveStats, device_of,
                        get_solver, gradient_difference, gradient_residual, loss_gradient, value_and_gradient)

from .curvature import Factorization, Factorized

# CG, Exact, LiSSA, Solver and SolveStats are re-exported: `unlearn.second_order(..., solver=unlearn.CG(...))`;
# so are Factorization and Factorized: `solver = unlearn.Factorized.build(model, objective, data)` once per
# trained model, then `second_order(..., solver=solver)` for every request (a solve each, no HVP).


# --------------------------------------------------------------------------------------------------------
# Requests


def _bool_vector(value: Tensor | Sequence[bool] | None, n: int, name: str) -> Tensor:
    if value is None:
        return torch.zeros(n, dtype=torch.bool)
    value = torch.as_tensor(value).reshape(-1)
    if value.dtype != torch.bool or len(value) != n:
        raise ValueError(f"{name} must be a bool vector with one entry per request row ({n}); got "
                         f"{value.dtype} of length {len(value)}.")
    return value.cpu()


@dataclass(frozen=True)
class Request:
    """An unlearning request: pairs (zᵢ, z̃ᵢ) with weights wᵢ, whose update targets
    `argmin L(θ; D) + Σᵢ wᵢ (ℓ(z̃ᵢ, θ) − ℓ(zᵢ, θ))` (G = Σ wᵢ (∇ℓ(z̃ᵢ) − ∇ℓ(zᵢ))).

    `rows`: indices into the training data (they may repeat: e.g. one window with several corrections);
    `z`, `z_tilde`: (inputs, targets) pairs with matching shapes; `z_tilde=None` removes every row (Z
    without Z̃); `removed` (bool per row) removes single rows — their Z̃ entry is ignored; `weights` (> 0,
    default 1; a number for every row, or one per row — kept as float64, so pass float64 tensors: a
    float32 0.1 is 0.10000000149) scale single rows. With unique rows, weight 1 and no removal it is the paper's request: a
    data-set edit (`is_edit`) that `apply_request` applies. Build it with the helpers below."""

    rows: Tensor
    z: Batch
    z_tilde: Batch | None = None
    weights: Tensor | float | None = None
    removed: Tensor | None = None

    def __post_init__(self) -> None:
        rows = torch.as_tensor(self.rows)
        if rows.ndim != 1 or rows.dtype.is_floating_point or rows.dtype == torch.bool:
            raise ValueError(f"rows must be a 1-D integer tensor of row indices; got {rows.dtype} of shape "
                             f"{tuple(rows.shape)}.")
        if len(rows) == 0:
            raise ValueError("the request is empty (Z has no rows): nothing to unlearn; check the rows or "
                             "features you selected.")
        n = len(rows)
        x, y = self.z
        if not (len(x) == len(y) == n):
            raise ValueError(f"rows ({n}), inputs ({len(x)}) and targets ({len(y)}) must have the same length.")
        removed = _bool_vector(self.removed, n, "removed")
        z_tilde = self.z_tilde
        if z_tilde is None:
            z_tilde, removed = self.z, torch.ones(n, dtype=torch.bool)
        xt, yt = z_tilde
        if x.shape != xt.shape or y.shape != yt.shape:
            raise ValueError(f"Z and Z̃ differ in shape: inputs {tuple(x.shape)} vs {tuple(xt.shape)}, "
                             f"targets {tuple(y.shape)} vs {tuple(yt.shape)}; Z̃ must hold the same rows, "
                             f"corrected (or pass z_tilde=None / removed= to remove rows).")
        if self.weights is None or isinstance(self.weights, (int, float)):
            weights = torch.full((n,), 1.0 if self.weights is None else float(self.weights), dtype=torch.float64)
        else:
            weights = torch.as_tensor(self.weights).cpu().to(torch.float64).reshape(-1)
        if len(weights) != n:
            raise ValueError(f"weights has {len(weights)} entries; expected one per request row ({n}).")
        if not bool(torch.isfinite(weights).all() & (weights > 0).all()):
            raise ValueError("weights must be finite and > 0 (leave a row out of the request instead of "
                             "giving it weight 0).")
        object.__setattr__(self, "rows", rows.long())
        object.__setattr__(self, "z_tilde", z_tilde)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "removed", removed)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def is_edit(self) -> bool:
        """Each row once with weight 1: the request is an edit of the data set (replace or remove rows)."""
        return len(torch.unique(self.rows)) == len(self.rows) and bool((self.weights == 1).all())

    @property
    def is_plain(self) -> bool:
        """An edit that removes nothing: the paper's request (rows replaced by their corrections)."""
        return self.is_edit and not bool(self.removed.any())

    @property
    def grad_evals(self) -> int:
        """Gradient evaluations G costs: one per row of Z and per kept row of Z̃."""
        return len(self) + int((~self.removed).sum())

    def __getitem__(self, index: Tensor | slice | Sequence[int]) -> "Request":
        """The sub-request of the selected pairs (weights and removal marks kept)."""
        i = torch.arange(len(self))[index]
        return Request(self.rows[i], (self.z[0][i], self.z[1][i]), (self.z_tilde[0][i], self.z_tilde[1][i]),
                       self.weights[i], self.removed[i])

    def split(self, parts: int) -> list["Request"]:
        """The request cut into `parts` consecutive pieces of (almost) equal size (what `steps` does)."""
        if isinstance(parts, bool) or not isinstance(parts, int) or not (1 <= parts <= len(self)):
            raise ValueError(f"steps={parts!r} must be an integer in [1, {len(self)}] (the number of request "
                             f"rows).")
        return [self[i] for i in torch.arange(len(self)).tensor_split(parts)]

    def weighted(self, weight: float) -> "Request":
        """The same pairs with every weight multiplied by `weight` (> 0)."""
        return replace(self, weights=self.weights * float(weight))

    def tiled(self, k: int) -> "Request":
        """k copies of the request, each with weights / k: the same total G, and with `steps=k` the update
        takes k fractional steps over every row, re-linearizing in between."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1.")
        return concat([self.weighted(1 / k)] * k)


def concat(requests: Sequence[Request]) -> Request:
    """One request holding the pairs of all `requests` in order (rows may repeat)."""
    if len(requests) == 0:
        raise ValueError("requests is empty: give at least one request to concatenate.")
    cat = torch.cat
    return Request(cat([r.rows for r in requests]),
                   (cat([r.z[0] for r in requests]), cat([r.z[1] for r in requests])),
                   (cat([r.z_tilde[0] for r in requests]), cat([r.z_tilde[1] for r in requests])),
                   cat([r.weights for r in requests]), cat([r.removed for r in requests]))


def _check_rows(rows: Sequence[int] | Tensor, n: int, edit: bool = False) -> Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index the {n} data rows (0 … {n - 1}); got {rows.min()} … {rows.max()}.")
    if edit and len(torch.unique(rows)) != len(rows):
        raise ValueError("rows holds duplicate indices; an edit changes each row once (build a weighted or "
                         "repeated request with Request(...) or concat).")
    return rows


def zero_features(x: Tensor, features: Sequence[int], value: float = 0.0) -> Tensor:
    """A copy of the 2-D feature matrix `x` with the columns `features` set to `value` (occlusion)."""
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D feature matrix (rows × features); got shape {tuple(x.shape)}.")
    features = torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if len(features) == 0:
        raise ValueError("features is empty: name at least one feature column to remove.")
    if features.min() < 0 or features.max() >= x.shape[1]:
        raise ValueError(f"feature index out of range: features must lie in [0, {x.shape[1] - 1}]; got "
                         f"{features.min()} … {features.max()}.")
    out = x.clone()
    out[:, features] = value
    return out


def remove_features(x: Tensor, y: Tensor, features: Sequence[int], rows: Sequence[int] | None = None,
                    value: float = 0.0) -> Request:
    """Request to set `features` to `value` in `rows` (default: every row where any of them differs)."""
    cleaned = zero_features(x, features, value)
    if rows is None:
        rows = (cleaned != x).any(dim=1).nonzero().reshape(-1)
    rows = _check_rows(rows, len(x), edit=True)
    return Request(rows, (x[rows], y[rows]), (cleaned[rows], y[rows]))


def remove_rows(x: Tensor, y: Tensor, rows: Sequence[int] | Tensor) -> Request:
    """Request to remove `rows` from the training data (Z without Z̃)."""
    rows = _check_rows(rows, len(x), edit=True)
    return Request(rows, (x[rows], y[rows]), None)


def _check_labels(name: str, y: Tensor, num_classes: int | None) -> None:
    if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} holds labels outside [0, {num_classes - 1}] (num_classes={num_classes}).")


def relabel(x: Tensor, y: Tensor, rows: Sequence[int] | Tensor, labels: Tensor | Sequence[int],
            num_classes: int | None = None) -> Request:
    """Request to give each row `rows[i]` the new label `labels[i]` (per-row label changes)."""
    rows = _check_rows(rows, len(x), edit=True)
    labels = torch.as_tensor(labels, dtype=y.dtype).reshape(-1)
    if len(labels) != len(rows):
        raise ValueError(f"labels has {len(labels)} entries; expected one per row in rows ({len(rows)}).")
    _check_labels("labels", labels, num_classes)
    return Request(rows, (x[rows], y[rows]), (x[rows], labels))


def fix_labels(x: Tensor, y_wrong: Tensor, y_clean: Tensor, rows: Sequence[int] | Tensor,
               num_classes: int | None = None) -> Request:
    """Request to relabel `rows` from `y_wrong` to `y_clean` (full-length label vectors)."""
    if y_wrong.shape != y_clean.shape or len(y_wrong) != len(x):
        raise ValueError(f"y_wrong {tuple(y_wrong.shape)} and y_clean {tuple(y_clean.shape)} must both be "
                         f"label vectors over the {len(x)} rows of x.")
    _check_labels("y_wrong", y_wrong, num_classes)
    _check_labels("y_clean", y_clean, num_classes)
    rows = _check_rows(rows, len(x), edit=True)
    return Request(rows, (x[rows], y_wrong[rows]), (x[rows], y_clean[rows]))


def request_from_datasets(data: Batch, corrected: Batch) -> Request:
    """Request holding exactly the rows where `corrected` differs from `data` (same shapes)."""
    (x, y), (xt, yt) = data, corrected
    if x.shape != xt.shape or y.shape != yt.shape:
        raise ValueError(f"data and corrected must have the same shapes; got inputs {tuple(x.shape)} vs "
                         f"{tuple(xt.shape)}, targets {tuple(y.shape)} vs {tuple(yt.shape)}.")
    changed = (x != xt).reshape(len(x), -1).any(1) | (y != yt).reshape(len(y), -1).any(1)
    rows = changed.nonzero().reshape(-1)
    return Request(rows, (x[rows], y[rows]), (xt[rows], yt[rows]))


def text_windows(stream: Tensor, length: int, stride: int) -> Batch:
    """Next-token windows of a 1-D token stream: inputs `stream[i:i+length]`, targets shifted by one."""
    if stream.ndim != 1 or length < 1 or stride < 1 or len(stream) <= length:
        raise ValueError(f"need a 1-D stream longer than length={length} and stride >= 1; got a stream of "
                         f"shape {tuple(stream.shape)} and stride={stride}.")
    starts = torch.arange(0, len(stream) - length, stride)
    index = starts[:, None] + torch.arange(length)[None, :]
    return stream[index], stream[index + 1]


def replace_tokens(stream: Tensor, old: Sequence[int], new: Sequence[int], length: int,
                   stride: int) -> Request:
    """Request to replace every occurrence of the token sequence `old` in `stream` by `new` (same length),
    over the windows `text_windows(stream, length, stride)` — partial occurrences at window edges included."""
    old, new = torch.as_tensor(old), torch.as_tensor(new)
    if len(old) != len(new) or len(old) == 0:
        raise ValueError(f"old ({len(old)} tokens) and new ({len(new)} tokens) must be non-empty and equally "
                         f"long so the windows stay aligned.")
    hits = (stream.unfold(0, len(old), 1) == old.to(stream)).all(1).nonzero().reshape(-1)
    if len(hits) == 0:
        raise ValueError("the token sequence `old` does not occur in the stream: nothing to replace.")
    corrected = stream.clone()
    for start in hits.tolist():
        corrected[start:start + len(old)] = new.to(stream)
    return request_from_datasets(text_windows(stream, length, stride), text_windows(corrected, length, stride))


def apply_request(data: Batch, request: Request) -> Batch:
    """The training data after the request: its rows replaced by their corrections and its removed rows
    dropped (a copy; the other rows keep their order). Needs an edit (`request.is_edit`)."""
    if not request.is_edit:
        raise ValueError("apply_request needs a request whose rows appear once with weight 1 (an edit of the "
                         "data set); this one repeats rows or weights them — it has no corrected data set "
                         "(for second_order use hessian='original').")
    x, y = data[0].clone(), data[1].clone()
    rows = _check_rows(request.rows, len(x))
    kept = ~request.removed
    x[rows[kept]], y[rows[kept]] = request.z_tilde[0][kept].to(x), request.z_tilde[1][kept].to(y)
    if request.removed.any():
        keep = torch.ones(len(x), dtype=torch.bool)
        keep[rows[request.removed]] = False
        x, y = x[keep], y[keep]
    return x, y


def request_gradient(model: nn.Module, objective: Objective, space: ParamSpace, request: Request,
                     batch_size: int = 1024) -> Tensor:
    """G = Σᵢ wᵢ (∇ℓ(z̃ᵢ) − ∇ℓ(zᵢ)) of the request at the model's parameters (removed rows: −wᵢ∇ℓ(zᵢ))."""
    if request.is_plain:  # the paper's request: one backward of the loss difference per chunk
        return gradient_difference(model, objective, space, request.z, request.z_tilde, batch_size)
    return gradient_difference(model, objective, space, request.z, request.z_tilde, batch_size,
                               weights=request.weights, removed=request.removed)


# --------------------------------------------------------------------------------------------------------
# Records


@dataclass
class UpdateResult:
    """What one unlearning update (or a baseline, or a fit) did.

    `params`: the names of the parameters it changed; `grad_evals`: examples whose gradient or HVP was
    evaluated (None where not counted, e.g. SISA), of which `hvp_evals` by HVPs (`grad_evals − hvp_evals`
    are plain per-example gradients); `hvps`: products with H over its data; `solves`: one
    `SolveStats` per inverse-HVP solve (one per step); `extra`: method-specific values (tau, iterations,
    shards_retrained …). Indexing by the former dict keys (`res["seconds"]`, `res["solver"]` → the
    solves as dicts, `res["tau"]`) still works — a compatibility shim for callers written against dicts."""

    method: str
    seconds: float
    grad_evals: int | None
    params: tuple[str, ...] = ()
    steps: int = 1
    hvps: int = 0
    hvp_evals: int = 0
    solves: list[SolveStats] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def residual(self) -> float | None:
        """The largest relative residual ‖b − (H + λI)x‖/‖b‖ of the solves (None without a solve)."""
        return max((s.residual for s in self.solves), default=None)

    @property
    def converged(self) -> bool | None:
        return all(s.converged for s in self.solves) if self.solves else None

    @property
    def negative_curvature(self) -> bool:
        return any(s.negative_curvature for s in self.solves)

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.solves) if self.solves else self.extra.get("iterations", 0)

    # -- compatibility with the former dict records --------------------------------------------------------
    __iter__ = None  # not a (model, record) pair: unpacking it must fail loudly, not via __getitem__(0)
    _FIELDS: ClassVar[frozenset[str]] = frozenset({"method", "seconds", "grad_evals", "params", "steps",
                                                   "hvps", "hvp_evals"})

    def __getitem__(self, key: str) -> Any:
        if key == "solver":
            return [s.as_dict() for s in self.solves]
        if key in self._FIELDS:
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(f"{key!r}: the record has {sorted(self._FIELDS | {'solver'} | set(self.extra))}.")

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._FIELDS or key in self.extra or (key == "solver" and bool(self.solves))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


# --------------------------------------------------------------------------------------------------------
# Updates


def _new_model(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    # device=None keeps the original's device, so data and model stay together.
    return copy.deepcopy(model).to(device_of(model) if device is None else get_device(device))


def _check_tau(tau: float) -> None:
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau={tau!r} (the unlearning rate) must be a finite number > 0.")


def first_order(model: nn.Module, objective: Objective, request: Request, *, tau: float,
                params: Sequence[str] | None = None, steps: int = 1, batch_size: int = 1024,
                device: str | torch.device | None = None) -> tuple[nn.Module, UpdateResult]:
    """θ_new = θ* − τ·G (the paper's first-order update); `steps` = k unlearns the request in k consecutive
    pieces, recomputing G at the current parameters after each piece (steps=1 is the plain update)."""
    _check_tau(tau)
    pieces = request.split(steps)
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    for piece in pieces:
        g = request_gradient(new, objective, space, piece, batch_size)
        space.assign(new, space.flat(new) - tau * g)
    return new, UpdateResult("first-order", time.perf_counter() - start, request.grad_evals,
                             tuple(space.names), steps, extra={"tau": tau})


def first_order_sweep(model: nn.Module, objective: Objective, request: Request, taus: Sequence[float], *,
                      params: Sequence[str] | None = None, batch_size: int = 1024,
                      device: str | torch.device | None = None) -> list[tuple[nn.Module, UpdateResult]]:
    """`first_order(..., tau=τ)` for every τ in `taus` (steps=1) from ONE gradient difference G (it does
    not depend on τ). Each result reports the cost of one update: G plus its step."""
    if len(taus) == 0:
        raise ValueError("taus is empty: give at least one unlearning rate.")
    for tau in taus:
        _check_tau(tau)
    start = time.perf_counter()
    base = _new_model(model, device)
    space = ParamSpace(base, params)
    g = request_gradient(base, objective, space, request, batch_size)
    seconds, theta, out = time.perf_counter() - start, space.flat(base), []
    for tau in taus:
        new = copy.deepcopy(base)
        space.assign(new, theta - tau * g)
        out.append((new, UpdateResult("first-order", seconds, request.grad_evals, tuple(space.names),
                                      extra={"tau": tau})))
    return out


HESSIANS = ("original", "corrected")
CURVATURES = ("exact", "gauss-newton")
SOLVERS = ("exact", "cg", "lissa")


@dataclass(frozen=True)
class SecondOrder:
    """Settings of the second-order update besides the solver.

    `hessian`: "original" — H over the training data as it was (the paper); "corrected" — H over the data
    with the request applied (needs an edit request), so the update is one Newton step on the corrected
    objective (taking ∇L(θ*; D) = 0). `curvature`: "exact" Hessian or "gauss-newton" (PSD, for non-convex
    models). `hessian_rows`: estimate H from a fixed random subsample of that many rows (drawn with
    `seed`, which also drives LiSSA's power iteration). `step`: the update is θ − step·(H + λI)⁻¹G.
    `newton_steps`: Newton steps per piece of the request. The first is the paper's update, which takes
    ∇L(θ; D) + λθ = 0 (true at θ*) and solves against G alone; each further one re-linearizes at the
    current θ and solves against the whole gradient of the objective corrected so far, ∇L(θ; D) + λθ +
    G(θ) — one more pass over the data and one more H. With more than one step every step, the first
    included, is a damped Newton step: its length is halved (at most 30 times) until the corrected
    objective falls by at least 1e-4 of the decrease its linearization predicts (Armijo backtracking, one
    forward pass over the data per try), which keeps Newton's method from diverging far from the optimum.
    With H from the corrected data this is Newton's method on the retraining objective: it converges to
    the retrained θ where one step over- or undershoots (weak L2, label flips)."""

    hessian: str = "original"
    curvature: str = "exact"
    hessian_rows: int | None = None
    step: float = 1.0
    seed: int = 0
    newton_steps: int = 1

    def __post_init__(self) -> None:
        check_choice("hessian", self.hessian, HESSIANS)
        check_choice("curvature", self.curvature, CURVATURES)
        if not (self.step > 0 and math.isfinite(self.step)):
            raise ValueError(f"step={self.step!r} must be a finite number > 0.")
        if isinstance(self.newton_steps, bool) or not isinstance(self.newton_steps, int) or self.newton_steps < 1:
            raise ValueError(f"newton_steps={self.newton_steps!r} must be an integer >= 1 (1: the paper's update).")
        if self.hessian_rows is not None and (isinstance(self.hessian_rows, bool)
                                              or not isinstance(self.hessian_rows, int) or self.hessian_rows < 1):
            raise ValueError(f"hessian_rows={self.hessian_rows!r} must be an integer >= 1 or None (all rows).")


# The former keyword arguments of second_order: settings, and solver options for a solver given by name.
_SETTING_KEYWORDS = frozenset(f.name for f in fields(SecondOrder))
_SOLVER_KEYWORDS = {"exact": {"damping": "damping"},
                    "cg": {"damping": "damping", "tol": "tol", "max_iter": "max_iter"},
                    "lissa": {"damping": "recursion_damping", "tol": "tol", "lissa_scale": "scale",
                              "lissa_iterations": "max_iter"}}
_ALL_SOLVER_KEYWORDS = frozenset({"damping", "tol", "max_iter", "lissa_scale", "lissa_iterations"})


def _second_order_options(solver: Solver | str, settings: SecondOrder | None,
                          keywords: dict[str, Any]) -> tuple[Solver, SecondOrder]:
    unknown = sorted(set(keywords) - _SETTING_KEYWORDS - _ALL_SOLVER_KEYWORDS)
    if unknown:
        raise TypeError(f"second_order() got unexpected keyword arguments {unknown}.")
    setting_kw = {k: v for k, v in keywords.items() if k in _SETTING_KEYWORDS}
    solver_kw = {k: v for k, v in keywords.items() if k in _ALL_SOLVER_KEYWORDS}
    if settings is not None and setting_kw:
        raise ValueError(f"give {sorted(setting_kw)} inside settings=SecondOrder(...), not beside it.")
    settings = settings if settings is not None else SecondOrder(**setting_kw)
    if isinstance(solver, Solver):
        if solver_kw:
            raise ValueError(f"{sorted(solver_kw)} are options of a solver named by a string; with a solver "
                             f"object set them on it, e.g. {type(solver).__name__}(damping=…).")
        return solver, settings
    check_choice("solver", solver, SOLVERS)
    if "damping" in solver_kw and not (solver_kw["damping"] >= 0):
        raise ValueError(f"damping={solver_kw['damping']!r} must be >= 0.")
    # Options the named solver does not use are ignored, as they always were (e.g. tol for "exact").
    mapping = _SOLVER_KEYWORDS[solver]
    return get_solver(solver, **{mapping[k]: v for k, v in solver_kw.items() if k in mapping}), settings


@torch.no_grad()
def _corrected_value(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch, request: Request,
                     batch_size: int) -> float:
    # L(θ; D) + λ/2‖θ‖² + Σ wᵢ (ℓ(z̃ᵢ) − ℓ(zᵢ)): the objective with `request` applied, as G and H see it.
    device = device_of(model)
    value = sum(float(objective(model, x.to(device), y.to(device)))
                for x, y in zip(data[0].split(batch_size), data[1].split(batch_size)))
    theta = space.flat(model)
    old = example_losses(model, objective, *request.z).double()
    new = example_losses(model, objective, *request.z_tilde).double() * (~request.removed)
    return value + objective.l2 / 2 * float(theta @ theta) + float((request.weights * (new - old)).sum())


def _backtrack(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch, request: Request,
               delta: Tensor, gradient: Tensor, batch_size: int) -> int:
    """θ ← θ − α·delta with α = 1, 1/2, 1/4, … until the objective corrected by `request` falls by at least
    1e-4·α·gradientᵀdelta (Armijo; at most 30 halvings). Returns the examples run forward."""
    theta, slope = space.flat(model).clone(), float(gradient @ delta)
    start = _corrected_value(model, objective, space, data, request, batch_size)
    alpha, rows = 1.0, len(data[0]) + 2 * len(request)
    forwards = rows
    for _ in range(30):
        space.assign(model, theta - alpha * delta)
        forwards += rows
        # slope <= 0: not a descent direction (negative curvature); the full step is all there is to take
        if slope <= 0 or _corrected_value(model, objective, space, data, request, batch_size) <= (
                start - 1e-4 * alpha * slope):
            break
        alpha /= 2
    return forwards


def second_order(model: nn.Module, objective: Objective, request: Request, data: Batch, *,
                 solver: Solver | str = "cg", settings: SecondOrder | None = None,
                 params: Sequence[str] | None = None, steps: int = 1, batch_size: int = 1024,
                 device: str | torch.device | None = None, **keywords: Any) -> tuple[nn.Module, UpdateResult]:
    """θ_new = θ* − step·(H + λI)⁻¹ G, H the Hessian of the total training loss at θ*, (H + λI)⁻¹ by
    `solver` — an `Exact`, `CG` or `LiSSA` object (its damping λ, tolerance, iterations) or a preset name.

    `settings`: a `SecondOrder` (which H, exact or Gauss-Newton curvature, subsampled H, step, seed).
    `steps` = k unlearns the request in k consecutive pieces, re-linearizing (G and H) at the current
    parameters after each, with H of the data corrected so far for `hessian="corrected"`; with
    `request.tiled(k)` it takes k fractional steps over every row instead — the iterative update that
    follows the path from θ* to the retrained θ when one Newton step overshoots (weak L2, label flips);
    `SecondOrder(newton_steps=k)` takes k Newton steps on the corrected objective instead (the iterative
    update that converges to retraining; each step after the first costs a pass over the data and an H).

    Damping (the solver's `damping` μ) solves (H + μI)δ = G: for non-convex (H indefinite) or weakly
    regularized (H nearly singular) problems. Along an eigenvector of H with eigenvalue h the step is G's
    component divided by h + μ instead of h: μ = 0 is the Newton step, μ ≫ the largest h tends to the
    first-order update with τ = 1/μ — damping interpolates between the two orders.

    The former keywords still work: `hessian`, `curvature`, `hessian_rows`, `step`, `seed` (→ settings)
    and, with a solver name, `damping`, `tol`, `max_iter`, `lissa_scale`, `lissa_iterations` ("lissa":
    `damping` is its recursion's d, effective damping d·scale; `lissa_scale` None → 1.1 × H's top
    eigenvalue)."""
    solver, settings = _second_order_options(solver, settings, keywords)
    _check_rows(request.rows, len(data[0]))
    if settings.hessian == "corrected" and not request.is_edit:
        raise ValueError("hessian='corrected' needs a request whose rows appear once with weight 1 (it builds "
                         "H on the corrected data set); use hessian='original' for weighted/repeated rows.")
    pieces = request.split(steps)
    generator = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    hvp_evals, hvps, solves = 0, 0, []
    grad_evals = request.grad_evals  # G of every piece; further Newton steps add theirs below
    forwards = 0  # examples run forward by the line search of damped Newton steps
    current = data
    for i, piece in enumerate(pieces):
        done = concat(pieces[:i + 1])
        if settings.hessian == "corrected":
            current = apply_request(data, done)
        for newton in range(settings.newton_steps):
            if newton == 0:
                g = request_gradient(new, objective, space, piece, batch_size)
            else:  # θ is not the optimum of the objective so far: solve against its whole gradient
                _, full = value_and_gradient(new, objective, space, data, batch_size)
                g = full + objective.l2 * space.flat(new) + request_gradient(new, objective, space, done,
                                                                              batch_size)
                grad_evals += len(data[0]) + done.grad_evals
            h = Curvature(new, objective, space, current, kind=settings.curvature, rows=settings.hessian_rows,
                          batch_size=batch_size, generator=generator)
            delta, stats = solver.solve(h, g, generator=generator)
            if settings.newton_steps == 1:
                space.assign(new, space.flat(new) - settings.step * delta)
            else:
                forwards += _backtrack(new, objective, space, data, done, settings.step * delta, g, batch_size)
            hvp_evals, hvps = hvp_evals + h.evals, hvps + stats.hvps
            solves.append(stats)
    return new, UpdateResult(f"second-order ({settings.hessian} H)", time.perf_counter() - start,
                             grad_evals + hvp_evals, tuple(space.names), steps, hvps, hvp_evals, solves,
                             extra={"solver_name": solver.name, "settings": settings, "forwards": forwards})


# --------------------------------------------------------------------------------------------------------
# Training and the baselines


def fit_lbfgs(model: nn.Module, objective: Objective, data: Batch, *, params: Sequence[str] | None = None,
              linear: Tensor | None = None, max_iter: int = 500, tol: float = 1e-10,
              batch_size: int = 8192) -> UpdateResult:
    """Minimize Σℓ + l2/2‖θ‖² (+ linearᵀθ) over `params` on `data` in place with full-batch L-BFGS
    (strong-Wolfe line search) — exact training for small convex models such as logistic regression.
    The result's `extra["iterations"]` holds L-BFGS's iterations."""
    space = ParamSpace(model, params)
    if linear is not None and linear.shape != (space.dim,):
        raise ValueError(f"linear has shape {tuple(linear.shape)}; expected ({space.dim},) over params.")
    theta = space.flat(model).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0.0,
                            history_size=20, line_search_fn="strong_wolfe")
    calls = [0]

    def closure() -> Tensor:
        space.assign(model, theta.detach())
        value, grad = value_and_gradient(model, objective, space, data, batch_size)
        flat = theta.detach()
        value, grad = value + objective.l2 / 2 * flat @ flat, grad + objective.l2 * flat
        if linear is not None:
            value, grad = value + linear.to(grad) @ flat, grad + linear.to(grad)
        theta.grad = grad
        calls[0] += 1
        return value

    start = time.perf_counter()
    opt.step(closure)
    space.assign(model, theta.detach())
    return UpdateResult("L-BFGS", time.perf_counter() - start, calls[0] * len(data[0]), tuple(space.names),
                        extra={"iterations": opt.state[theta]["n_iter"]})


def retrain(model: nn.Module, objective: Objective, corrected: Batch, *, warm_start: bool = True,
            params: Sequence[str] | None = None, linear: Tensor | None = None, seed: int = 0,
            max_iter: int = 500, tol: float = 1e-10,
            device: str | torch.device | None = None) -> tuple[nn.Module, UpdateResult]:
    """Retraining on the corrected data with L-BFGS, from θ* (`warm_start`) or re-initialized weights."""
    new = _new_model(model, device)
    if not warm_start:
        torch.manual_seed(seed)
        for module in new.modules():
            if hasattr(module, "reset_parameters") and module is not new:
                module.reset_parameters()
    result = fit_lbfgs(new, objective, corrected, params=params, linear=linear, max_iter=max_iter, tol=tol)
    result.method = "retraining" + (" (warm start)" if warm_start else "")
    return new, result


def fine_tune(model: nn.Module, objective: Objective, request: Request, *, lr: float, epochs: int = 1,
              batch_size: int = 32, params: Sequence[str] | None = None, seed: int = 0,
              device: str | torch.device | None = None) -> tuple[nn.Module, UpdateResult]:
    """SGD on the mean loss of the corrected rows Z̃ only (the paper's fine-tuning baseline); removed rows
    have no Z̃ and weights are ignored."""
    if lr <= 0 or epochs < 1 or batch_size < 1:
        raise ValueError(f"fine_tune needs lr > 0 (got {lr}), epochs >= 1 (got {epochs}), batch_size >= 1.")
    kept = ~request.removed
    if not kept.any():
        raise ValueError("fine-tuning trains on Z̃, and this request removes every row: nothing to train on.")
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    generator = torch.Generator().manual_seed(seed)
    x, y = request.z_tilde
    if not kept.all():
        x, y = x[kept], y[kept]
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            g = loss_gradient(new, objective, space, (x[idx], y[idx]), batch_size) / len(idx)
            space.assign(new, space.flat(new) - lr * g)
    return new, UpdateResult("fine-tuning", time.perf_counter() - start, epochs * len(x), tuple(space.names),
                             extra={"lr": lr, "epochs": epochs})


def predict(model: nn.Module, x: Tensor, batch_size: int | None = None) -> Tensor:
    """Predicted labels (CPU): the sign of a single logit (binary models) or the arg-max over classes.
    Runs on the model's own device through `gsmu.base.train.predict_logits` (which sets eval mode)."""
    out = train.predict_logits(model, x, batch_size, device=device_of(model))
    return (out > 0).long() if out.ndim == 1 else out.argmax(-1)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> float:
    """Share of rows predicted correctly: `gsmu.base.train.accuracy` on the model's own device."""
    return train.accuracy(model, x, y.reshape(-1), batch_size, device=device_of(model))


@torch.no_grad()
def param_distance(a: nn.Module, b: nn.Module) -> float:
    """‖θ_a − θ_b‖₂ over all parameters (e.g. an update against the retrained model)."""
    return float(torch.cat([(p - q.to(p)).reshape(-1) for p, q in zip(a.parameters(), b.parameters())]).norm())


class Sisa:
    """SISA training (Bourtoule et al.): `shards` disjoint random shards, one model each, majority vote.

    Unlearning retrains only the shards that hold affected rows, on their corrected rows (removed rows
    leave their shard). `fit(model, data)` trains a model in place; `build()` makes a fresh one. When `fit`
    returns a record with `grad_evals` (as `fit_lbfgs` does) the ensemble counts them: `training_grad_evals`
    (training every shard) and each `unlearn` result's `grad_evals` (retraining the touched shards); a `fit`
    that returns nothing leaves both None.
    """

    def __init__(self, build: Callable[[], nn.Module], fit: Callable[[nn.Module, Batch], object],
                 data: Batch, shards: int, seed: int = 0):
        n = len(data[0])
        if not (1 <= shards <= n):
            raise ValueError(f"shards={shards} must lie in [1, {n}].")
        self.build, self.fit, self.data = build, fit, (data[0].clone(), data[1].clone())
        self.active = torch.ones(n, dtype=torch.bool)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.shard_of = torch.empty(n, dtype=torch.long)
        for s, idx in enumerate(order.tensor_split(shards)):
            self.shard_of[idx] = s
        self._evals: int | None = 0
        self.models = [self._train(s) for s in range(shards)]
        self.training_grad_evals: int | None = self._evals

    def _train(self, shard: int) -> nn.Module:
        idx = ((self.shard_of == shard) & self.active).nonzero().reshape(-1)
        model = self.build()
        evals = getattr(self.fit(model, (self.data[0][idx], self.data[1][idx])), "grad_evals", None)
        # one shard whose fit does not count makes the whole count unknown (None), never an undercount
        self._evals = None if evals is None or self._evals is None else self._evals + evals
        return model

    def predict(self, x: Tensor) -> Tensor:
        votes = torch.stack([predict(m, x) for m in self.models])
        return torch.mode(votes, dim=0).values

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return float((self.predict(x) == y).float().mean())

    def unlearn(self, request: Request) -> UpdateResult:
        """Apply the request (an edit) and retrain the affected shards in place."""
        if not request.is_edit:
            raise ValueError("SISA unlearns data-set edits: each row once with weight 1.")
        start = time.perf_counter()
        rows = _check_rows(request.rows, len(self.shard_of))
        kept = ~request.removed
        self.data[0][rows[kept]] = request.z_tilde[0][kept].to(self.data[0])
        self.data[1][rows[kept]] = request.z_tilde[1][kept].to(self.data[1])
        self.active[rows[request.removed]] = False
        touched = torch.unique(self.shard_of[rows]).tolist()
        self._evals = 0
        for s in touched:
            self.models[s] = self._train(s)
        return UpdateResult("SISA", time.perf_counter() - start, self._evals,
                            extra={"shards_retrained": len(touched)})


# --------------------------------------------------------------------------------------------------------
# Certification


def certify_constant(delta: float) -> float:
    """c = √(2 ln(1.5/δ)) of the Gaussian loss-perturbation mechanism (Guo et al. 2020)."""
    if not (0 < delta < 1):
        raise ValueError(f"delta={delta} must lie in (0, 1).")
    return math.sqrt(2 * math.log(1.5 / delta))


def certifying_sigma(residual: float, epsilon: float, delta: float) -> float:
    """Smallest noise scale σ = c·β/ε for which a gradient residual β is (ε, δ)-certified."""
    if epsilon <= 0:
        raise ValueError(f"epsilon={epsilon} must be > 0.")
    return certify_constant(delta) * residual / epsilon


def is_certified(residual: float, sigma: float, epsilon: float, delta: float) -> bool:
    """Whether β ≤ σ·ε/c, i.e. the update is (ε, δ)-certified under training noise σ."""
    return residual <= sigma * epsilon / certify_constant(delta)


def perturbation(dim: int, sigma: float, generator: torch.Generator) -> Tensor:
    """The loss-perturbation vector b ~ N(0, σ²I) of certified training."""
    if sigma < 0:
        raise ValueError(f"sigma={sigma} must be >= 0.")
    return sigma * torch.randn(dim, generator=generator, dtype=torch.float64)


def example_losses(model: nn.Module, objective: Objective, x: Tensor, y: Tensor) -> Tensor:
    """Per-example losses ℓ(z, θ) (the paper's loss-difference scatter compares them across models)."""
    device = device_of(model)
    with torch.no_grad():
        return torch.func.vmap(lambda xi, yi: objective(model, xi[None], yi[None]))(x.to(device), y.to(device)).cpu()


def _probabilities(model: nn.Module, x: Tensor) -> Tensor:
    out = train.predict_logits(model, x, device=device_of(model))
    return torch.sigmoid(out) if out.ndim == 1 else torch.softmax(out, -1)


def _fidelity(model: nn.Module, objective: Objective, valid: Batch,
              reference: tuple[Tensor, Tensor] | None) -> tuple[float, float]:
    # The paper's fidelity (§6): the share of held-out predictions that agree with the retrained model's
    # (or with the labels when no retrained model is given). It is a step function of τ — small requests
    # leave it tied over many τ — so a continuous score breaks ties: the mean gap between the predicted
    # probabilities and the retrained model's, or else the held-out loss. Both are "larger is better".
    x, y = valid
    if reference is None:
        with torch.no_grad():
            return float((predict(model, x) == y.reshape(-1).cpu()).double().mean()), -float(objective(model, x, y))
    labels, probabilities = reference
    gap = (_probabilities(model, x) - probabilities).abs().reshape(len(x), -1).sum(1).mean()
    return float((predict(model, x) == labels).double().mean()), -float(gap)


def best_first_order(model: nn.Module, objective: Objective, request: Request, corrected: Batch,
                     taus: Sequence[float], *, valid: Batch | None = None, reference: nn.Module | None = None,
                     **kwargs) -> tuple[nn.Module, UpdateResult]:
    """First-order update with the τ of `taus` chosen by one of two criteria (the chosen τ is
    `result.extra["tau"]`, the criterion `extra["criterion"]`, every τ's score `extra["scores"]`: tuples,
    larger is better — (−residual,) or (agreement, −tie-breaker)).

    * `valid` given (held-out rows with the request's correction applied, e.g. features zeroed; never the
      test rows): the paper's fidelity (§6) on them — the share of predictions that agree with
      `reference`'s (the retrained model), ties broken by the smaller mean gap between predicted
      probabilities; or, when `reference` is None, the accuracy on `valid`'s labels, ties broken by the
      smaller held-out loss. With `reference` this picks the τ whose model behaves most like retraining.
    * `valid` None (the former behaviour): the smallest gradient residual ‖∇L(θ; corrected)‖ on the
      corrected training data (needs no retrained model). Beware: where the loss is far from quadratic
      along −G (weak L2, label flips) the residual can favour a τ that barely moves θ.

    G is computed once for all τ (`first_order_sweep`, so `steps` must stay 1). The cost counts G, one step
    per τ and, per τ, the residual's pass over `corrected` or the forward passes over `valid`."""
    if len(taus) == 0:
        raise ValueError("taus is empty: give at least one unlearning rate.")
    if reference is not None and valid is None:
        raise ValueError("reference (the retrained model) is only used to score held-out rows: pass valid= "
                         "too, or drop reference to choose τ by the gradient residual.")
    if kwargs.get("steps", 1) != 1:
        raise ValueError("best_first_order sweeps τ over one gradient difference: steps must be 1 (call "
                         "first_order(..., steps=k) with the chosen τ for the iterative update).")
    kwargs.pop("steps", None)
    start = time.perf_counter()
    tried = first_order_sweep(model, objective, request, taus, **kwargs)
    if valid is None:
        criterion = "residual"
        scores = [(-gradient_residual(m, objective, corrected),) for m, _ in tried]  # larger is better
        extra_evals = len(taus) * len(corrected[0])
    else:
        criterion = "fidelity"
        valid = (valid[0].to(device_of(tried[0][0])), valid[1].to(device_of(tried[0][0])))
        target = None if reference is None else (predict(reference, valid[0]), _probabilities(reference, valid[0]))
        scores = [_fidelity(m, objective, valid, target) for m, _ in tried]
        extra_evals = 0  # forward passes only: counted in extra["forwards"]
    best = max(range(len(taus)), key=scores.__getitem__)
    new, result = tried[best]
    result.seconds = time.perf_counter() - start
    result.grad_evals = request.grad_evals + extra_evals
    result.extra.update(criterion=criterion, scores=scores)
    if valid is not None:  # one forward pass over valid per τ, plus the reference's
        result.extra["forwards"] = (len(taus) + (reference is not None)) * len(valid[0])
    return new, result


METHODS = ("occlusion", "retraining", "fine-tuning", "first-order", "second-order (original H)",
           "second-order (corrected H)", "SISA")
COLUMNS = ("method", "accuracy", "fidelity", "residual", "distance", "grad_evals", "passes", "seconds", "tau")
Predictor = nn.Module | Sisa
Metrics = Callable[[Predictor], dict[str, float]]


def predictions(model: Predictor, x: Tensor) -> Tensor:
    """Hard predictions (CPU) of a module (`predict`) or of an ensemble with a `predict` method (`Sisa`)."""
    return predict(model, x) if isinstance(model, nn.Module) else model.predict(x).cpu()


def _solvers(solver: Solver | str | Mapping[str, Solver | str]) -> dict[str, Solver | str]:
    if not isinstance(solver, Mapping):
        return {hessian: solver for hessian in HESSIANS}
    if set(solver) != set(HESSIANS):
        raise ValueError(f"solver as a mapping needs one solver per Hessian, keys {list(HESSIANS)}; got "
                         f"{sorted(solver)} (or give one solver for both).")
    return dict(solver)


def compare_methods(model: nn.Module, objective: Objective, data: Batch, request: Request, test: Batch, *,
                    taus: Sequence[float], fine_tune_lr: float, sisa: Sisa | None = None,
                    solver: Solver | str | Mapping[str, Solver | str] = "exact", seed: int = 0,
                    valid: Batch | None = None, metrics: Metrics | None = None,
                    names: Mapping[str, str] | None = None, batch_size: int = 1024, retrain_max_iter: int = 500,
                    retrain_tol: float = 1e-10) -> tuple[list[dict], dict[str, nn.Module]]:
    """All unlearning methods of the paper's Section 6 on one request, side by side — the one method list
    behind every comparison (feature removal in notebooks 05 and 09, backdoor removal in notebook 11).

    Methods (`METHODS`, in this order): occlusion (the unchanged model), warm-started L-BFGS retraining on the
    corrected data (`retrain_max_iter`, `retrain_tol`) — the reference —, fine-tuning on Z̃ (`fine_tune_lr`),
    first-order with the best τ of `taus`, second-order with H from the original and from the corrected data
    (`solver`: one solver for both, or a mapping {"original": …, "corrected": …}, e.g. two `Factorized`;
    `batch_size` chunks its passes), and with `sisa` a copy of that ensemble after unlearning (the given one is
    left untouched). First-order's τ: with held-out `valid` rows, the one whose predictions there agree best
    with retraining's (the paper's fidelity, `best_first_order(valid=, reference=)`); without, the smallest
    gradient residual on the corrected data. `test` (and `valid`) must already look like the corrected data
    (e.g. features removed).

    Each row (`COLUMNS`): the method (renamed by `names`, e.g. {"occlusion": "none"}), test accuracy, fidelity
    (share of test predictions equal to the retrained model's), gradient residual on the corrected training
    data, distance ‖θ − θ_retrained‖, per-example gradient evaluations, pass equivalents (`gsmu.mu.cost`:
    gradients, HVPs and forward passes), seconds and the chosen τ (NaN but for first-order), then whatever
    `metrics(model)` returns for that method's model (the SISA ensemble included), e.g. an attack success
    rate. SISA (an ensemble) has no single θ: its residual and distance are NaN; its row adds
    `shards_retrained`. Returns the rows and the models by (renamed) method, SISA excepted."""
    check_nonempty("taus", taus)
    for tau in taus:  # before any update runs
        check_positive("taus", tau)
    check_positive("fine_tune_lr", fine_tune_lr)
    solvers = _solvers(solver)
    names = dict(names or {})
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"names renames {unknown}, which are not methods; the methods are {list(METHODS)}.")
    corrected = apply_request(data, request)
    runs = {"occlusion": (copy.deepcopy(model), UpdateResult("occlusion", 0.0, 0))}
    runs["retraining"] = retrain(model, objective, corrected, max_iter=retrain_max_iter, tol=retrain_tol)
    target = runs["retraining"][0]
    runs["fine-tuning"] = fine_tune(model, objective, request, lr=fine_tune_lr, seed=seed)
    runs["first-order"] = best_first_order(model, objective, request, corrected, taus, valid=valid,
                                           reference=None if valid is None else target)
    for hessian in HESSIANS:
        runs[f"second-order ({hessian} H)"] = second_order(model, objective, request, data, solver=solvers[hessian],
                                                            settings=SecondOrder(hessian=hessian, seed=seed),
                                                            batch_size=batch_size)
    x_test, y_test = test
    reference = predict(target, x_test)

    def row(name: str, m: Predictor, res: UpdateResult, single: bool) -> dict:
        predicted = predictions(m, x_test)
        out = {"method": names.get(name, name),
               # float32 mean, as `accuracy` and `Sisa.accuracy` have always reported it
               "accuracy": float((predicted == y_test.reshape(-1).cpu()).float().mean()),
               "fidelity": float((predicted == reference).double().mean()),
               "residual": gradient_residual(m, objective, corrected) if single else math.nan,
               "distance": param_distance(m, target) if single else math.nan,
               "grad_evals": res.grad_evals,
               "passes": math.nan if res.grad_evals is None else cost.passes(
                   gradients=res.grad_evals - res.hvp_evals, hvps=res.hvp_evals, forwards=res.extra.get("forwards", 0)),
               "seconds": res.seconds, "tau": res.extra.get("tau", math.nan) if name == "first-order" else math.nan}
        extra = {} if metrics is None else dict(metrics(m))
        clash = sorted(set(extra) & set(out))
        if clash:
            raise ValueError(f"metrics returned {clash}, which compare_methods already reports; give those "
                             f"measures other names.")
        return out | extra

    rows = [row(name, m, res, True) for name, (m, res) in runs.items()]
    if sisa is not None:
        ensemble = copy.deepcopy(sisa)
        res = ensemble.unlearn(request)
        rows.append(row("SISA", ensemble, res, False) | {"shards_retrained": res.extra["shards_retrained"]})
    return rows, {names.get(name, name): m for name, (m, _) in runs.items()}


def retrain_fraction(model: nn.Module, updated: nn.Module, target: nn.Module) -> float:
    """Where an update lands: ‖θ_updated − θ_retrained‖ / ‖θ* − θ_retrained‖ — 0 is retraining, 1 is no
    better than leaving θ* alone, > 1 an overshoot."""
    gap = param_distance(model, target)
    if gap == 0:
        raise ValueError("the original and the retrained model coincide (the request changes nothing): the "
                         "fraction of the retrain distance is undefined.")
    return param_distance(updated, target) / gap


def landing(model: nn.Module, objective: Objective, data: Batch, request: Request, *, valid: Batch,
            taus: Sequence[float], steps: int, damping: float) -> tuple[list[dict], dict[str, nn.Module]]:
    """Where the updates of §4 land on one request, as a fraction of the retrain distance
    (`retrain_fraction`): first-order with τ chosen on the held-out `valid` rows by fidelity to retraining
    (`best_first_order`), the one-shot second-order update, the damped one `(H + μI)⁻¹G` (μ = `damping`)
    and two iterative ones with k = `steps`: k fractional steps over the whole request (`Request.tiled`),
    and k Newton steps on the corrected objective (`SecondOrder(newton_steps=k)`). Second-order solves
    densely (`Exact`: models with up to a few thousand parameters, such as logistic regression). Returns
    table rows (method, fraction, residual on the corrected data, cost in passes over `data` — pass
    equivalents of `gsmu.mu.cost`: a gradient 1, an HVP 2, a forward 1/3 — seconds, τ) and the models by
    method."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (k steps of the iterative updates).")
    if not (damping > 0 and math.isfinite(damping)):
        raise ValueError(f"damping={damping!r} (μ of the damped update) must be a finite number > 0.")
    corrected = apply_request(data, request)
    runs = {"retraining": retrain(model, objective, corrected)}
    target = runs["retraining"][0]
    runs["first-order (validation τ)"] = best_first_order(model, objective, request, corrected, taus, valid=valid,
                                                          reference=target)
    runs["second-order"] = second_order(model, objective, request, data, solver=Exact())
    runs[f"second-order, damped (μ={damping:g})"] = second_order(model, objective, request, data,
                                                                  solver=Exact(damping=damping))
    runs[f"second-order, {steps} fractional steps"] = second_order(model, objective, request.tiled(steps), data,
                                                                  solver=Exact(), steps=steps)
    runs[f"second-order, {steps} Newton steps"] = second_order(model, objective, request, data, solver=Exact(),
                                                              settings=SecondOrder(newton_steps=steps))
    rows = [{"method": name, "fraction": retrain_fraction(model, m, target),
             "residual": gradient_residual(m, objective, corrected),
             "passes": cost.passes(gradients=res.grad_evals - res.hvp_evals, hvps=res.hvp_evals,
                                   forwards=res.extra.get("forwards", 0)) / len(data[0]),
             "seconds": res.seconds, "tau": res.extra.get("tau", float("nan"))} for name, (m, res) in runs.items()]
    return rows, {name: m for name, (m, _) in runs.items()}


@dataclass(frozen=True)
class CertifiedRun:
    """One run of certified unlearning: the training noise σ, the residual β of the perturbed objective
    after the update, and whether β ≤ σε/c. Indexable by the former dict keys (`run["residual"]`)."""

    sigma: float
    residual: float
    certified: bool

    def __getitem__(self, key: str) -> Any:
        if key not in ("sigma", "residual", "certified"):
            raise KeyError(key)
        return getattr(self, key)


def certified_run(model: nn.Module, objective: Objective, data: Batch, corrected: Batch,
                  update: Callable[[nn.Module], nn.Module], *, sigma: float, epsilon: float, delta: float,
                  seed: int) -> tuple[nn.Module, CertifiedRun]:
    """One run of certified unlearning: train on `data` with loss perturbation b ~ N(0, σ²I) (L-BFGS from
    `model`), apply `update` to the noisy model, and measure the residual β of the perturbed objective on
    `corrected` — the quantity the (ε, δ) bound is about (the noiseless residual under-estimates it)."""
    b = perturbation(ParamSpace(model).dim, sigma, torch.Generator().manual_seed(seed))
    noisy, _ = retrain(model, objective, data, linear=b)
    new = update(noisy)
    beta = gradient_residual(new, objective, corrected, linear=b)
    return new, CertifiedRun(sigma, beta, is_certified(beta, sigma, epsilon, delta))
