"""Amortized curvature for unlearning: factorize H once per trained model, answer every request with a solve.

*Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023), Section 4, updates
θ* − H⁻¹G with H the Hessian of the total training loss at θ* — the same H for every request on the same
model (with the paper's `hessian="original"`). Requests arrive one after another, so the dense H is formed
once, factorized once (Cholesky, or an eigendecomposition that also serves any damping), and each request
then costs its gradient difference G plus two triangular solves (or two products with the eigenvectors).

- `Factorization.build(model, objective, data)`: H = ∇²Σℓ + l2·I (exact; the Gauss-Newton matrix is the same
  for a linear model) over `data` at the model's parameters, as a dense matrix — for a linear model (one
  `nn.Linear` whose outputs are the model's outputs, e.g. logistic regression) from the Kronecker structure
  H = Σᵢ Sᵢ ⊗ x̃ᵢx̃ᵢᵀ (Sᵢ the criterion's Hessian in the outputs; a few matrix products), otherwise column by
  column from Hessian-vector products (`Curvature.dense`). `solve(b, damping)` = (H + damping·I)⁻¹ b.
- `Factorized(factorization, damping, fallback)`: the solver object for `unlearn.second_order(...,
  solver=...)`; it checks that the curvature it is handed is the one it factorized (same parameters, data
  and kind), and hands any other curvature to `fallback` when one is given (the corrected H per request).

Costs are reported apart: `Factorization.cost` holds the one-off seconds and multiply-accumulates (MACs)
of forming and factorizing H; `solve_macs` the per-request MACs of one solve; `passes` turns MACs into
full-model pass equivalents of a linear model (`gsmu.mu.cost`) and `break_even` counts the requests that
amortize the one-off cost.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..base.runtime import check_choice
from .influence import (Batch, Curvature, Objective, Operator, ParamSpace, Solver, SolveStats, _check_damping,
                        _check_rhs, _chunks, _relative, device_of)

METHODS = ("cholesky", "eigh")


@dataclass(frozen=True)
class FactorizationCost:
    """The one-off cost of a factorization: forming H (`hessian_seconds`, `hessian_macs`, `hvps` and
    `hvp_evals` — examples × HVPs — on the HVP path) and factorizing it (`factor_seconds`, `factor_macs`)."""

    route: str
    hessian_seconds: float
    factor_seconds: float
    hessian_macs: float
    factor_macs: float
    hvps: int = 0
    hvp_evals: int = 0

    @property
    def seconds(self) -> float:
        return self.hessian_seconds + self.factor_seconds

    @property
    def macs(self) -> float:
        return self.hessian_macs + self.factor_macs


def _linear_layer(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch) -> nn.Linear | None:
    """The `nn.Linear` whose weight (and bias) are exactly `space` and whose output is the model's output
    (checked on a few rows), else None."""
    modules = dict(model.named_modules())
    for prefix in {n.rsplit(".", 1)[0] if "." in n else "" for n in space.names}:
        layer = modules.get(prefix)
        if not isinstance(layer, nn.Linear):
            continue
        own = [f"{prefix}.weight" if prefix else "weight"] + ([f"{prefix}.bias" if prefix else "bias"]
                                                              if layer.bias is not None else [])
        if sorted(own) != sorted(space.names):
            return None
        x = data[0][:8].to(device_of(model))
        with torch.no_grad():
            out = objective.outputs(model, x)
            if x.reshape(len(x), -1).shape[1] != layer.in_features:
                return None
            ref = nn.functional.linear(x.reshape(len(x), -1), layer.weight, layer.bias)
        if out.numel() == ref.numel() and torch.allclose(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6):
            return layer
        return None
    return None


def _output_hessians(objective: Objective, outputs: Tensor, targets: Tensor, classes: int) -> Tensor:
    """Sᵢ = ∂²ℓ(oᵢ, yᵢ)/∂oᵢ² per row, shape (rows, classes, classes)."""
    def one(o: Tensor, y: Tensor) -> Tensor:
        return objective.criterion(o[None], y[None])
    s = torch.func.vmap(torch.func.hessian(one))(outputs, targets)
    return s.reshape(len(outputs), classes, classes)


def _linear_hessian(model: nn.Module, objective: Objective, space: ParamSpace, layer: nn.Linear, data: Batch,
                    batch_size: int) -> tuple[Tensor, float]:
    """H = Σᵢ Sᵢ ⊗ x̃ᵢx̃ᵢᵀ + l2·I (x̃ = [x, 1] with a bias) in `space`'s order, float64, and its MACs."""
    classes, features = layer.out_features, layer.in_features
    bias = layer.bias is not None
    width = features + int(bias)
    blocks = torch.zeros(classes, classes, width, width, dtype=torch.float64)
    device = device_of(model)
    macs = 0.0
    with torch.no_grad():
        for x, y in _chunks(data, batch_size, device):
            out = objective.outputs(model, x)
            # Products in the data's precision (float32 data: float32 within a chunk, float64 across chunks).
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            s = _output_hessians(objective, out.detach(), y, classes).to(dtype).cpu()
            xt = x.reshape(len(x), -1).to(dtype).cpu()
            if bias:
                xt = torch.cat([xt, torch.ones(len(xt), 1, dtype=dtype)], 1)
            nonzero = int((xt != 0).sum())
            sparse = xt.to_sparse() if nonzero < 0.1 * xt.numel() else None  # e.g. Drebin's counts
            for c in range(classes):
                # One product for the blocks (c, c…C−1): x̃ᵀ [s_{c,d} x̃]_d.
                scaled = (s[:, c, c:, None] * xt[:, None, :]).reshape(len(xt), -1)
                product = xt.T @ scaled if sparse is None else torch.sparse.mm(sparse.t(), scaled)
                blocks[c, c:] += product.to(torch.float64).reshape(width, classes - c, width).permute(1, 0, 2)
                macs += (len(xt) * width if sparse is None else nonzero) * width * (classes - c)
    for c in range(classes):
        for d in range(c + 1, classes):
            blocks[d, c] = blocks[c, d].T
    # Flat position of (class c, input j) in the space: weight is (classes, features) row-major, then bias.
    offsets = dict(zip(space.names, np.cumsum([0] + space.sizes[:-1]).tolist()))
    weight_name = next(n for n in space.names if n.endswith("weight"))
    pos = offsets[weight_name] + torch.arange(classes)[:, None] * features + torch.arange(features)[None, :]
    if bias:
        bias_name = next(n for n in space.names if n.endswith("bias"))
        pos = torch.cat([pos, offsets[bias_name] + torch.arange(classes)[:, None]], 1)
    order = torch.argsort(pos.reshape(-1))  # kron row of each flat coordinate
    kron = blocks.permute(0, 2, 1, 3).reshape(classes * width, classes * width)
    h = kron.index_select(0, order).index_select(1, order)
    h.diagonal().add_(objective.l2)
    return h, macs


def passes(macs: float, dim: int) -> float:
    """Full-model pass equivalents (`gsmu.mu.cost`) of `macs` multiply-accumulates on a linear model with
    `dim` parameters: one per-example gradient there costs 3·dim MACs (forward dim, backward twice that)."""
    if macs < 0 or dim < 1:
        raise ValueError(f"need macs >= 0 and dim >= 1 (the model's parameter count); got {macs}, {dim}.")
    return macs / (3.0 * dim)


def break_even(once: float, per_request: float, alternative: float) -> int | None:
    """How many requests amortize a one-off cost: the smallest n with once + n·per_request < n·alternative
    (e.g. pass equivalents of the factorization, of one factorized solve, and of retraining or of a solve
    from scratch, per request); None when a request costs no less than the alternative."""
    if min(once, per_request, alternative) < 0:
        raise ValueError(f"costs must be >= 0; got once={once}, per_request={per_request}, "
                         f"alternative={alternative}.")
    if alternative <= per_request:
        return None
    return int(once // (alternative - per_request)) + 1


class Factorization:
    """H = ∇²(Σℓ + l2/2‖θ‖²) over `data` at θ (a parameter subset `params`), formed and factorized once.

    `method="cholesky"`: H + d·I = LLᵀ for the `damping` d given (about ⅛ the work of an eigendecomposition;
    another damping factorizes again, from the kept H); `"eigh"`: H = V diag(w) Vᵀ, so every damping reuses it. `solve(b, damping)`
    returns (H + damping·I)⁻¹ b in float64 arithmetic (cast back to b's dtype). Build it with `build`.
    """

    def __init__(self, matrix: Tensor, *, theta: Tensor, names: Sequence[str], kind: str, data: Batch,
                 method: str = "cholesky", damping: float = 0.0, cost_hessian: tuple[str, float, float, int, int] = ("dense", 0.0, 0.0, 0, 0)):
        check_choice("method", method, METHODS)
        _check_damping(damping)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(theta):
            raise ValueError(f"H has shape {tuple(matrix.shape)}; expected ({len(theta)}, {len(theta)}) for "
                             f"{len(theta)} parameters.")
        self.method, self.kind, self.names = method, kind, tuple(names)
        self.theta = theta.detach().to("cpu", torch.float64).clone()
        self.dim = len(theta)
        self.data = data
        self._rows = len(data[0])
        start = time.perf_counter()  # the factorization's time includes making H a symmetric float64 matrix
        matrix = matrix.detach().to("cpu", torch.float64)
        matrix = (matrix + matrix.T) / 2
        self._h: Tensor | None = None
        self._chol: tuple[float, Tensor] | None = None
        self._cast: dict[torch.dtype, tuple[Tensor, ...]] = {}
        if method == "eigh":
            self.eigenvalues, self.eigenvectors = torch.linalg.eigh(matrix)
            factor_macs = 4.0 * self.dim ** 3 / 3 + self.dim ** 3  # tridiagonalization + eigenvectors (about)
        else:
            self._h = matrix
            self._cholesky(damping)
            factor_macs = self.dim ** 3 / 6
        route, seconds, macs, hvps, hvp_evals = cost_hessian
        self.cost = FactorizationCost(route, seconds, time.perf_counter() - start, macs, factor_macs, hvps,
                                      hvp_evals)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, objective: Objective, data: Batch, *, params: Sequence[str] | None = None,
              method: str = "cholesky", kind: str = "exact", damping: float = 0.0,
              batch_size: int = 4096) -> "Factorization":
        """Form H over `data` at `model`'s parameters and factorize it. Linear models (the parameters are one
        `nn.Linear` producing the outputs) take the Kronecker route, where exact and Gauss-Newton coincide;
        others the HVP route (one HVP per parameter over all rows; for ≲ 2·10⁴ parameters). `damping`: the
        damping the Cholesky factor is prepared for (others factorize again when first used)."""
        check_choice("method", method, METHODS)
        _check_damping(damping)
        check_choice("kind", kind, ("exact", "gauss-newton"))
        if len(data[0]) != len(data[1]) or len(data[0]) == 0:
            raise ValueError(f"data must hold as many targets as inputs, at least one row; got "
                             f"{len(data[0])} inputs and {len(data[1])} targets.")
        space = ParamSpace(model, params)
        start = time.perf_counter()
        layer = _linear_layer(model, objective, space, data)
        if layer is not None:
            matrix, macs = _linear_hessian(model, objective, space, layer, data, batch_size)
            cost = ("kronecker", time.perf_counter() - start, macs, 0, 0)
        else:
            if space.dim > 20000:
                raise ValueError(f"a dense H over {space.dim} parameters is too large to factorize; use CG.")
            curv = Curvature(model, objective, space, data, kind=kind, batch_size=batch_size)
            matrix = curv.dense()
            # One HVP ≈ 2 gradient passes ≈ 6 forward MACs per example; counted in examples × HVPs.
            cost = ("hvp", time.perf_counter() - start, 0.0, space.dim, curv.evals)
        return cls(matrix, theta=space.flat(model), names=space.names, kind=kind, data=data, method=method,
                   damping=damping, cost_hessian=cost)

    # -- solving -------------------------------------------------------------------------------------------
    def _cholesky(self, damping: float) -> Tensor:
        if self._chol is None or self._chol[0] != damping:
            a = self._h + damping * torch.eye(self.dim, dtype=torch.float64)
            factor, info = torch.linalg.cholesky_ex(a)
            if int(info) != 0:
                raise ValueError(f"H + {damping}·I is not positive definite (Cholesky failed at column "
                                 f"{int(info)}): add damping, use the Gauss-Newton curvature, or method='eigh'.")
            self._chol = (damping, factor)
        return self._chol[1]

    def solve(self, b: Tensor, damping: float = 0.0) -> Tensor:
        """(H + damping·I)⁻¹ b (damping ≥ 0; with Cholesky a new damping factorizes once more)."""
        _check_rhs(b)
        _check_damping(damping)
        if len(b) != self.dim:
            raise ValueError(f"the right-hand side has {len(b)} entries; this factorization is over {self.dim} "
                             f"parameters ({', '.join(self.names)}) — it belongs to another model or subset.")
        rhs = b.detach().to("cpu", torch.float64)
        if self.method == "eigh":
            shifted = self.eigenvalues + damping
            if not bool((shifted > 0).all()):
                raise ValueError(f"H + {damping}·I has eigenvalue {float(shifted.min()):.3g} <= 0: not positive "
                                 f"definite; raise the damping.")
            x = self.eigenvectors @ ((self.eigenvectors.T @ rhs) / shifted)
        else:
            factor = self._cholesky(damping)  # two triangular solves (torch.cholesky_solve copies the factor)
            half = torch.linalg.solve_triangular(factor, rhs[:, None], upper=False)
            x = torch.linalg.solve_triangular(factor.T, half, upper=True)[:, 0]
        return x.to(b)

    def matvec(self, v: Tensor, damping: float = 0.0) -> Tensor:
        """(H + damping·I) v from the kept H or eigendecomposition, in v's precision (as the model's own HVP;
        the copy in that precision is kept: a float32 residual check reads half the memory)."""
        w = v.detach().cpu()
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float64
        if dtype not in self._cast:
            self._cast[dtype] = ((self.eigenvectors.to(dtype), self.eigenvalues.to(dtype)) if self.method == "eigh"
                                 else (self._h.to(dtype),))
        w = w.to(dtype)
        if self.method == "eigh":
            vectors, values = self._cast[dtype]
            out = vectors @ ((values + damping) * (vectors.T @ w))
        else:
            out = self._cast[dtype][0] @ w + damping * w
        return out.to(v)

    @property
    def matvec_macs(self) -> float:
        """Multiply-accumulates of one product with H + d·I (the residual check of each solve)."""
        return float(self.dim ** 2) * (2 if self.method == "eigh" else 1)

    @property
    def solve_macs(self) -> float:
        """Multiply-accumulates of one solve: two triangular solves (P²) or two products with V (2P²)."""
        return float(self.dim ** 2) * (2 if self.method == "eigh" else 1)

    def check(self, h: Curvature) -> None:
        """Raise unless `h` is the curvature this factorization holds (same parameters, data and kind)."""
        problem = self.mismatch(h)
        if problem is not None:
            raise ValueError(problem)

    def mismatch(self, h: Curvature) -> str | None:
        """Why `h` is not the curvature this factorization holds (None when it is)."""
        problem = self._model_mismatch(h)
        if problem is not None:
            return problem
        if h.scale != 1.0:
            return ("the curvature uses a subsample of rows (hessian_rows); the factorization holds H "
                    "over every row: leave hessian_rows at None.")
        if not self._same_data(h.data):
            return ("the curvature is over other data than the factorization (hessian='corrected' "
                    "forms H on each request's corrected data): use hessian='original', or CG.")
        linear = self.cost.route == "kronecker"  # exact and Gauss-Newton coincide for a linear model
        if h.kind != self.kind and not linear:
            return f"the curvature is {h.kind!r}; this factorization holds the {self.kind!r} H."
        return None

    def _model_mismatch(self, h: Curvature) -> str | None:
        """Why `h` is not at this factorization's parameters (another model, subset or θ), else None."""
        if h.dim != self.dim or tuple(h.space.names) != self.names:
            return (f"the curvature is over {h.dim} parameters ({', '.join(h.space.names)}); this "
                    f"factorization is over {self.dim} ({', '.join(self.names)}) — it belongs to "
                    f"another model or parameter subset: build one for this model.")
        if not torch.allclose(h.theta.detach().to("cpu", torch.float64), self.theta, rtol=1e-6, atol=1e-7):
            return ("the curvature is at other parameter values than the factorization's θ: the "
                    "factorization serves one trained model (steps=1, hessian='original'); with "
                    "steps > 1 each step re-linearizes, so use CG there.")
        return None

    def _same_data(self, data: Batch) -> bool:
        if data[0] is self.data[0] and data[1] is self.data[1]:
            return True
        if len(data[0]) != self._rows or data[0].shape != self.data[0].shape:
            return False
        return bool(torch.equal(data[0].cpu(), self.data[0].cpu()) and torch.equal(data[1].cpu(),
                                                                                  self.data[1].cpu()))


@dataclass(frozen=True)
class Factorized(Solver):
    """Inverse-HVP solver from a `Factorization` (built once per model): `solve(h, b)` checks that `h` is the
    factorized curvature (a `Curvature`; a dense matrix or matvec only by size) and returns
    (H + damping·I)⁻¹ b with no HVP. `Factorized.build(model, objective, data, damping=…, method=…)`.

    `fallback`: a solver for another curvature of the same model at the same θ (other rows or kind, e.g.
    `Exact()` for H over each request's corrected data), so one solver object serves a comparison that asks
    for both Hessians of §4 — the factorized original H, and a corrected H that changes per request; None
    (the default) raises instead. A curvature of another model or θ raises either way."""

    factorization: Factorization = field(compare=False, repr=False)
    damping: float = 0.0
    fallback: Solver | None = None
    name: ClassVar[str] = "factorized"

    def __post_init__(self) -> None:
        if not isinstance(self.factorization, Factorization):
            raise TypeError(f"factorization must be a Factorization (Factorization.build(...)); got "
                            f"{type(self.factorization).__name__}.")
        if self.fallback is not None and not isinstance(self.fallback, Solver):
            raise TypeError(f"fallback must be a Solver (e.g. Exact()) or None; got {type(self.fallback).__name__}.")
        _check_damping(self.damping)

    @classmethod
    def build(cls, model: nn.Module, objective: Objective, data: Batch, *, damping: float = 0.0,
              fallback: Solver | None = None, **options) -> "Factorized":
        """`Factorized(Factorization.build(model, objective, data, **options), damping, fallback)`."""
        _check_damping(damping)
        return cls(Factorization.build(model, objective, data, damping=damping, **options), damping, fallback)

    def solve(self, h: Operator | None, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        _check_rhs(b)
        start = time.perf_counter()
        fact = self.factorization
        if isinstance(h, Curvature):
            if (self.fallback is not None and fact._model_mismatch(h) is None  # same model, other rows or kind
                    and fact.mismatch(h) is not None):
                return self.fallback.solve(h, b, generator=generator)
            fact.check(h)
        elif isinstance(h, Tensor) and h.shape != (fact.dim, fact.dim):
            raise ValueError(f"H has shape {tuple(h.shape)}; this factorization is over {fact.dim} parameters.")
        x = fact.solve(b, self.damping)
        residual = _relative(b, b - fact.matvec(x, self.damping))
        return x, SolveStats(self.name, 1, residual, True, False, 0, time.perf_counter() - start, self.damping)


class Nystrom:
    """Randomized Nyström preconditioner for CG on H + damping·I (Frangella, Tropp & Udell, SIAM J. Matrix
    Anal. Appl. 2023): a rank-`rank` sketch H ≈ U Λ̂ Uᵀ from `rank` HVPs (one batch over the data when `h` is
    a `Curvature`), then M⁻¹ = (λ̂_min + μ) U (Λ̂ + μI)⁻¹ Uᵀ + (I − UUᵀ) with μ = `damping`. Built once per
    model (`hvps`, `hvp_evals`, `seconds` are its one-off cost); pass it as `CG(preconditioner=...)` with the
    same damping. For models too large to factorize (CNN heads)."""

    def __init__(self, h: Operator, dim: int, rank: int, *, damping: float = 0.0,
                 generator: torch.Generator | None = None):
        if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= dim):
            raise ValueError(f"rank={rank!r} must be an integer in [1, {dim}] (the number of parameters).")
        _check_damping(damping)
        start = time.perf_counter()
        omega = torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=torch.float64))[0]
        evals_before = h.evals if isinstance(h, Curvature) else 0
        if isinstance(h, Curvature):
            if h.dim != dim:
                raise ValueError(f"the curvature is over {h.dim} parameters, not dim={dim}.")
            basis = omega.T.to(h.theta)
            y = torch.cat([h._dense_block(basis[i:i + 256]) for i in range(0, rank, 256)]).T
        elif isinstance(h, Tensor):
            y = h.to(torch.float64) @ omega
        else:
            y = torch.stack([h(omega[:, j]) for j in range(rank)], 1)
        y = y.detach().to("cpu", torch.float64)
        nu = math.sqrt(dim) * torch.finfo(torch.float64).eps * float(y.norm())
        y_nu = y + nu * omega
        c = torch.linalg.cholesky((omega.T @ y_nu + (omega.T @ y_nu).T) / 2)
        b = torch.linalg.solve_triangular(c, y_nu.T, upper=False).T
        u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
        self.u, self.eigenvalues = u, (sigma ** 2 - nu).clamp_min(0.0)
        self.damping, self.rank, self.dim = damping, rank, dim
        self.hvps = rank
        self.hvp_evals = (h.evals - evals_before) if isinstance(h, Curvature) else 0
        self.seconds = time.perf_counter() - start

    def with_damping(self, damping: float) -> "Nystrom":
        """The same sketch as a preconditioner for H + `damping`·I (the sketch U, Λ̂ does not depend on the
        damping, so a damping sweep pays for it once)."""
        _check_damping(damping)
        other = copy.copy(self)
        other.damping = damping
        return other

    def __call__(self, r: Tensor) -> Tensor:
        if r.shape != (self.dim,):
            raise ValueError(f"the residual has shape {tuple(r.shape)}; the preconditioner is over {self.dim} "
                             f"parameters.")
        r64 = r.detach().to("cpu", torch.float64)
        low = self.u.T @ r64
        shifted = (self.eigenvalues + self.damping).clamp_min(1e-30)
        out = (float(shifted[-1])) * (self.u @ (low / shifted)) + r64 - self.u @ low
        return out.to(r)


__all__ = ["Factorization", "FactorizationCost", "Factorized", "Nystrom", "METHODS", "break_even", "passes"]
