"""Influence machinery: summed losses, gradients, Hessian-vector products and inverse-HVP solvers.

Implements the linear-algebra core of *Machine Unlearning of Features and Labels* (Warnecke et al.,
NDSS 2023), Section 4: the gradient difference `G` over affected rows, products with the Hessian of the
total training loss `H = ∇²(Σ ℓ + λ/2‖θ‖²)` (exact, forward-over-reverse with `torch.func`, or the
positive semi-definite Gauss-Newton matrix `Jᵀ H_out J` from a double vector-Jacobian product), and the
solvers for `H⁻¹G` as objects (`Exact`, `CG`, `LiSSA`: `solve(h, b) -> (x, SolveStats)`, the same stats for
every solver; `get_solver` maps the names "exact", "cg", "lissa" to them; CG takes an optional
preconditioner, and `gsmu.mu.curvature` adds the amortized `Factorized` solver and the `Nystrom` preconditioner). Everything acts on a flat vector over a
chosen subset of the model's parameters (`ParamSpace`, chosen by name prefixes), for any torch model whose
loss is a sum over examples (`Objective`); the L2 term is handled in one place so G, H and residuals agree.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base.runtime import device_of  # noqa: F401 — re-exported for unlearn

Batch = tuple[Tensor, Tensor]


def cross_entropy_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over every position: logits `…×C`, integer targets `…`."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="sum")


def binary_cross_entropy_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    """Logistic loss summed over examples: one logit per example (`models.LogisticRegression`, 2 classes)."""
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="sum")


@dataclass(frozen=True)
class Objective:
    """The training objective `Σ criterion(forward(model, x), y) + l2/2 ‖θ‖²` with a *summed* data loss.

    `criterion` must sum (not average) over examples so that a row's influence does not depend on the
    data-set size; `forward` adapts models whose output is not the logits (e.g. `lambda m, x: m(x)[0]`).
    Calling the objective gives the data loss without the L2 term (the term cancels in `G`; `Curvature`
    adds `l2·I`, `gradient_residual` adds `l2·θ`).
    """

    criterion: Callable[[Tensor, Tensor], Tensor] = cross_entropy_sum
    l2: float = 0.0
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2={self.l2!r} must be a finite number >= 0 (the λ of λ/2‖θ‖²).")

    def outputs(self, model: nn.Module, inputs: Tensor) -> Tensor:
        return model(inputs) if self.forward is None else self.forward(model, inputs)

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.criterion(self.outputs(model, inputs), targets)


class _Bound(nn.Module):
    """Wraps model + objective so `torch.func.functional_call` can swap parameters under any forward."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, inputs: Tensor) -> Tensor:
        return self.objective.outputs(self.model, inputs)


class ParamSpace:
    """A flat coordinate system over the model parameters whose names start with one of `prefixes`."""

    def __init__(self, model: nn.Module, prefixes: Sequence[str] | None = None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if prefixes is not None:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            known = sorted({n.rsplit(".", 1)[0] for n, _ in named})
            for prefix in prefixes:
                if not any(n == prefix or n.startswith(prefix + ".") for n, _ in named):
                    raise ValueError(f"params prefix {prefix!r} matches no trainable parameter; "
                                     f"choose among the modules {known}.")
            named = [(n, p) for n, p in named
                     if any(n == q or n.startswith(q + ".") for q in prefixes)]
        if not named:
            raise ValueError("params selects no trainable parameter; pass None for all of them.")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)

    def flat(self, model: nn.Module) -> Tensor:
        """The selected parameters of `model` as one detached vector."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def split(self, vec: Tensor) -> dict[str, Tensor]:
        """`vec` cut back into named tensors (views, so gradients flow through them)."""
        return {n: v.view(s) for n, v, s in zip(self.names, vec.split(self.sizes), self.shapes)}

    def assign(self, model: nn.Module, vec: Tensor) -> None:
        """Write `vec` into the selected parameters of `model` in place."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.split(vec).items():
                params[name].copy_(value)


@contextlib.contextmanager
def _functorch_backends(model: nn.Module) -> Iterator[None]:
    # cuDNN's RNN kernel needs real storage (flatten_parameters) and is not twice differentiable, and
    # mkldnn's has no forward-mode AD: torch.func transforms through an nn.RNN/LSTM/GRU need the native kernels.
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


def _chunks(data: Batch, batch_size: int, device: torch.device) -> Iterator[Batch]:
    inputs, targets = data
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)} rows) and targets ({len(targets)} rows) differ in length.")
    for start in range(0, len(inputs), batch_size):
        yield inputs[start:start + batch_size].to(device), targets[start:start + batch_size].to(device)


def _functional(model: nn.Module, objective: Objective, space: ParamSpace):
    """(outputs(θ, x), loss(θ, x, y)) as pure functions of the flat parameter vector θ."""
    bound = _Bound(model, objective)

    def outputs(theta: Tensor, inputs: Tensor) -> Tensor:
        params = {"model." + k: v for k, v in space.split(theta).items()}
        return torch.func.functional_call(bound, params, (inputs,))

    def loss(theta: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        return objective.criterion(outputs(theta, inputs), targets)

    return outputs, loss



def loss_gradient(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch,
                  batch_size: int = 1024) -> Tensor:
    """∇θ Σ_{(x,y)∈data} ℓ — the summed data-loss gradient over the selected parameters (no L2 term)."""
    device = device_of(model)
    _, loss = _functional(model, objective, space)
    theta = space.flat(model)
    total = torch.zeros_like(theta)
    with _functorch_backends(model):
        for x, y in _chunks(data, batch_size, device):
            total += torch.func.grad(loss)(theta, x, y).detach()
    return total


def value_and_gradient(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch,
                       batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(Σ ℓ, ∇θ Σ ℓ) over `data` in one pass (no L2 term) — what a full-batch optimizer needs."""
    device = device_of(model)
    _, loss = _functional(model, objective, space)
    theta = space.flat(model)
    value, total = torch.zeros((), dtype=theta.dtype, device=device), torch.zeros_like(theta)
    with _functorch_backends(model):
        for x, y in _chunks(data, batch_size, device):
            grad, val = torch.func.grad_and_value(loss)(theta, x, y)
            value, total = value + val.detach(), total + grad.detach()
    return value, total


def gradient_difference(model: nn.Module, objective: Objective, space: ParamSpace, z: Batch,
                        z_tilde: Batch | None, batch_size: int = 1024, *, weights: Tensor | None = None,
                        removed: Tensor | None = None) -> Tensor:
    """G = Σᵢ w̃ᵢ ∇ℓ(z̃ᵢ, θ) − Σᵢ wᵢ ∇ℓ(zᵢ, θ) over the rows of a request (only those rows are touched).

    `weights` wᵢ (default 1) scale row i; `removed` marks rows whose correction is dropped (w̃ᵢ = 0: the row
    leaves the data); `z_tilde=None` removes every row. With equal weights and nothing removed this is one
    backward of the loss difference per chunk of rows (times the common weight)."""
    n = len(z[0])
    if z_tilde is None:
        z_tilde, removed = z, torch.ones(n, dtype=torch.bool)
    weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    removed = None if removed is None else torch.as_tensor(removed, dtype=torch.bool).reshape(-1)
    for name, value in (("weights", weights), ("removed", removed)):
        if value is not None and len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries; expected one per request row ({n}).")
    device = device_of(model)
    _, loss = _functional(model, objective, space)
    theta = space.flat(model)
    uniform = weights is None or bool((weights == weights[0]).all())
    if uniform and (removed is None or not bool(removed.any())):
        total = torch.zeros_like(theta)
        with _functorch_backends(model):
            for (x, y), (xt, yt) in zip(_chunks(z, batch_size, device), _chunks(z_tilde, batch_size, device)):
                total += torch.func.grad(lambda t: loss(t, xt, yt) - loss(t, x, y))(theta).detach()
        return total if weights is None or float(weights[0]) == 1.0 else float(weights[0]) * total
    weights = torch.ones(n, dtype=torch.float64) if weights is None else weights
    kept = weights if removed is None else torch.where(removed, torch.zeros_like(weights), weights)
    total = torch.zeros_like(theta)
    # Rows sharing a coefficient are summed in one pass (a request holds few distinct weights).
    for coefficients, (x, y) in ((kept, z_tilde), (-weights, z)):
        for c in torch.unique(coefficients).tolist():
            if c != 0:
                idx = (coefficients == c).nonzero().reshape(-1)
                total += c * loss_gradient(model, objective, space, (x[idx], y[idx]), batch_size)
    return total


def gradient_residual(model: nn.Module, objective: Objective, data: Batch, *,
                      params: Sequence[str] | None = None, linear: Tensor | None = None,
                      batch_size: int = 4096) -> float:
    """‖∇θ (Σ ℓ + l2/2‖θ‖² + linearᵀθ)‖₂ on `data` — how far `model` is from the optimum of that objective.

    `linear` is the loss-perturbation vector `b` of certified training (flat over `params`); pass the same
    one the model was trained with, since certification bounds the residual of the perturbed objective.
    """
    space = ParamSpace(model, params)
    theta = space.flat(model)
    grad = loss_gradient(model, objective, space, data, batch_size) + objective.l2 * theta
    if linear is not None:
        if linear.shape != theta.shape:
            raise ValueError(f"linear has shape {tuple(linear.shape)}; expected ({space.dim},) over params.")
        grad = grad + linear.to(theta)
    return float(grad.norm())


class Curvature:
    """Products with H = ∇²Σℓ + l2·I over `data` (or a fixed random subsample of `rows` of it) at the
    model's current parameters, restricted to `space`.

    `kind="exact"`: the true Hessian via forward-over-reverse (`jvp(grad(loss))`; reverse-over-reverse for
    recurrent models, whose fused CUDA cells lack forward-mode AD); indefinite away from a minimum of a
    non-convex loss. `kind="gauss-newton"`: `Jᵀ H_out J + l2·I` from two vector-Jacobian
    products and the criterion's Hessian in the outputs — positive semi-definite for a convex criterion.
    With `rows` the data sum is rescaled by n/rows so it estimates the full-data H. `evals` counts the
    examples touched (one HVP over an example counted as one gradient evaluation).
    """

    def __init__(self, model: nn.Module, objective: Objective, space: ParamSpace, data: Batch, *,
                 kind: str = "exact", rows: int | None = None, batch_size: int = 1024,
                 generator: torch.Generator | None = None):
        if kind not in ("exact", "gauss-newton"):
            raise ValueError(f"curvature={kind!r} is not one of ['exact', 'gauss-newton'].")
        n = len(data[0])
        if rows is not None and not (1 <= rows <= n):
            raise ValueError(f"hessian_rows={rows} must lie in [1, {n}] (the number of data rows).")
        if rows is not None and rows < n:
            pick = torch.randperm(n, generator=generator)[:rows]
            data = (data[0][pick], data[1][pick])
        self.scale = n / len(data[0])
        self.model, self.objective, self.space, self.data = model, objective, space, data
        self.kind, self.batch_size = kind, batch_size
        self.theta = space.flat(model)
        self.dim = space.dim
        self.evals = 0
        self._outputs, self._loss = _functional(model, objective, space)
        self._recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())

    def _batch_product(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        if self.kind == "exact":
            grad = torch.func.grad(lambda t: self._loss(t, x, y))
            if self._recurrent:
                # CUDA's fused LSTM/GRU cells have no forward-mode AD; reverse-over-reverse works everywhere.
                return torch.func.grad(lambda t: grad(t) @ v)(self.theta)
            return torch.func.jvp(grad, (self.theta,), (v,))[1]
        out, pullback = torch.func.vjp(lambda t: self._outputs(t, x), self.theta)
        # J v as the vector-Jacobian product of the (linear) map u ↦ Jᵀu: reverse mode only, which also
        # works where forward-mode AD is missing (RNN kernels).
        _, pull_jt = torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
        jv = pull_jt(v)[0]
        crit_grad = torch.func.grad(lambda o: self.objective.criterion(o, y))
        h_jv = torch.func.jvp(crit_grad, (out.detach(),), (jv,))[1]
        return pullback(h_jv)[0]

    def __call__(self, v: Tensor) -> Tensor:
        """H v for a flat vector v over the parameter subset."""
        total = self.objective.l2 * v
        with _functorch_backends(self.model):
            for x, y in _chunks(self.data, self.batch_size, self.theta.device):
                total = total + self.scale * self._batch_product(x, y, v).detach()
                self.evals += len(x)
        return total

    def dense(self) -> Tensor:
        """The full `dim × dim` matrix, one HVP per coordinate — for small parameter subsets only."""
        if self.dim > 20000:
            raise ValueError(f"a dense Hessian over {self.dim} parameters is too large; use solver='cg'.")
        eye = torch.eye(self.dim, dtype=self.theta.dtype, device=self.theta.device)
        blocks = [self._dense_block(eye[start:start + 256]) for start in range(0, self.dim, 256)]
        matrix = torch.cat(blocks, dim=0).T
        return (matrix + matrix.T) / 2

    def _dense_block(self, basis: Tensor) -> Tensor:
        total = self.objective.l2 * basis
        with _functorch_backends(self.model):
            for x, y in _chunks(self.data, self.batch_size, self.theta.device):
                block = torch.func.vmap(lambda v: self._batch_product(x, y, v))(basis)
                total = total + self.scale * block.detach()
                self.evals += len(x) * len(basis)
        return total


# ---------------------------------------------------------------------------------------------------------
# Inverse-HVP solvers: one class per method, each `solve(h, b) -> (x, SolveStats)` with x ≈ (H + damping·I)⁻¹ b.
# `h` is a `Curvature`, any callable v ↦ H v (a "matvec"), or a dense symmetric matrix.

Operator = Callable[[Tensor], Tensor] | Tensor


@dataclass(frozen=True)
class SolveStats:
    """What one inverse-HVP solve did; the same fields for every solver.

    `residual` is the relative residual ‖b − (H + damping·I)x‖/‖b‖ at exit (CG: its recursive residual;
    exact and LiSSA: measured with one extra product), `damping` the damping of the system actually solved
    (LiSSA: `damping·scale` of its recursion), `hvps` the products with H (the dense solve: one per column),
    `change` LiSSA's last relative change of its iterate (None for the others), `scale` LiSSA's scale."""

    solver: str
    iterations: int
    residual: float
    converged: bool
    negative_curvature: bool
    hvps: int
    seconds: float
    damping: float
    change: float | None = None
    scale: float | None = None

    def as_dict(self) -> dict:
        """The stats under the keys of the former dict records (`effective_damping` for `damping`)."""
        out = asdict(self)
        out["effective_damping"] = out.pop("damping")
        return out


class _Counted:
    """A matvec that counts its calls (the HVPs of one solve)."""

    def __init__(self, h: Operator):
        if isinstance(h, Tensor):
            if h.ndim != 2 or h.shape[0] != h.shape[1]:
                raise ValueError(f"a dense curvature must be a square matrix; got shape {tuple(h.shape)}.")
            matrix = h
            self.matvec: Callable[[Tensor], Tensor] = lambda v: matrix @ v
        elif callable(h):
            self.matvec = h
        else:
            raise TypeError(f"h must be a Curvature, a callable v -> H v or a dense matrix; got "
                            f"{type(h).__name__}.")
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.matvec(v)


def _check_rhs(b: Tensor) -> None:
    if not isinstance(b, Tensor) or b.ndim != 1:
        raise ValueError(f"the right-hand side must be a flat vector (1-D tensor); got "
                         f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}.")


def _check_damping(damping: float) -> None:
    if not (damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"damping={damping!r} must be a finite number >= 0 (added as damping·I to H).")


def _check_tol(tol: float) -> None:
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol={tol!r} must be a finite number > 0 (the relative residual to reach).")


def _check_max_iter(max_iter: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} must be an integer >= 1.")


def _relative(b: Tensor, r: Tensor) -> float:
    return float(r.norm() / b.norm().clamp_min(1e-30))


class Solver:
    """Base of the inverse-HVP solvers: `solve(h, b)` returns x ≈ (H + damping·I)⁻¹ b and its `SolveStats`.
    `generator` feeds solvers with randomness (LiSSA's power iteration); the others ignore it."""

    name: ClassVar[str] = ""
    damping: float

    def solve(self, h: Operator, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        raise NotImplementedError


@dataclass(frozen=True)
class Exact(Solver):
    """Dense solve `torch.linalg.solve(H + damping·I, b)`; H built column by column from HVPs unless given
    as a matrix (`Curvature.dense`, so for parameter subsets up to ~20k entries)."""

    damping: float = 0.0
    name: ClassVar[str] = "exact"

    def __post_init__(self) -> None:
        _check_damping(self.damping)

    def solve(self, h: Operator, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        _check_rhs(b)
        start = time.perf_counter()
        if isinstance(h, Curvature):
            matrix, hvps = h.dense(), h.dim
        elif isinstance(h, Tensor):
            matrix, hvps = h, 0
        else:
            matvec = _Counted(h)
            eye = torch.eye(len(b), dtype=b.dtype, device=b.device)
            matrix = torch.stack([matvec(e) for e in eye], dim=1)
            matrix, hvps = (matrix + matrix.T) / 2, matvec.calls
        if matrix.shape != (len(b), len(b)):
            raise ValueError(f"H has shape {tuple(matrix.shape)}; expected a square ({len(b)}, {len(b)}) matrix "
                             f"for a right-hand side of {len(b)} entries.")
        a = matrix + self.damping * torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)
        x = torch.linalg.solve(a, b)
        rel = _relative(b, b - a @ x)
        return x, SolveStats(self.name, 1, rel, True, False, hvps, time.perf_counter() - start, self.damping)


@dataclass(frozen=True)
class CG(Solver):
    """Conjugate gradient on `H + damping·I`. Stops when the relative residual ≤ `tol`, after `max_iter`
    iterations, or as soon as a search direction has non-positive curvature (H is not positive definite
    there: the iterate so far is returned with `negative_curvature` set — add damping or use Gauss-Newton).
    `preconditioner`: a symmetric positive definite map r ↦ M⁻¹r (e.g. `gsmu.mu.curvature.Nystrom`, built
    once per model); the tolerance stays on the unpreconditioned residual ‖b − (H + damping·I)x‖/‖b‖."""

    damping: float = 0.0
    tol: float = 1e-6
    max_iter: int = 200
    preconditioner: Callable[[Tensor], Tensor] | None = field(default=None, compare=False, repr=False)
    name: ClassVar[str] = "cg"

    def __post_init__(self) -> None:
        _check_damping(self.damping)
        _check_tol(self.tol)
        _check_max_iter(self.max_iter)
        if self.preconditioner is not None and not callable(self.preconditioner):
            raise ValueError(f"preconditioner must be a callable r -> M⁻¹ r; got {type(self.preconditioner).__name__}.")

    def solve(self, h: Operator, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        _check_rhs(b)
        start, matvec = time.perf_counter(), _Counted(h)
        x = torch.zeros_like(b)
        r = b.clone()
        precondition = self.preconditioner
        z = r if precondition is None else precondition(r)
        p = z.clone()
        rz = r @ z
        b_norm = float(b.norm()) or 1.0
        # ‖r‖ from r·z without a preconditioner (z = r): the same arithmetic as plain CG always had.
        residual, iterations, negative = float((rz if precondition is None else r @ r).sqrt()) / b_norm, 0, False
        for it in range(1, self.max_iter + 1):
            if residual <= self.tol:
                break
            ap = matvec(p) + self.damping * p
            curv = p @ ap
            if curv <= 0:
                negative = True
                break
            alpha = rz / curv
            x = x + alpha * p
            r = r - alpha * ap
            z = r if precondition is None else precondition(r)
            rz_new = r @ z
            p = z + (rz_new / rz) * p
            rz = rz_new
            iterations, residual = it, float((rz if precondition is None else r @ r).sqrt()) / b_norm
        return x, SolveStats(self.name, iterations, residual, residual <= self.tol, negative, matvec.calls,
                             time.perf_counter() - start, self.damping)


@dataclass(frozen=True)
class LiSSA(Solver):
    """The authors' LiSSA recursion `u ← b + (1 − d)·u − H u / scale`, returning `u / scale`.

    Its fixed point is `(H + d·scale·I)⁻¹ b`. `damping` is that *effective* damping `d·scale` — the same
    meaning as for `Exact` and `CG` (the recursion uses d = damping/scale, which must stay below 1);
    `recursion_damping` sets d directly instead (the authors' parameter; the former `solver="lissa"`
    path). `scale` must exceed H's largest eigenvalue; None takes `scale_factor` × the top eigenvalue by
    `power_iterations` of power iteration (drawn with the `generator` given to `solve`, else `seed`).
    Converges at the rate `1 − d − λ_min/scale` per step; stops when the relative change of u ≤ `tol` or
    after `max_iter` steps. The matvec may be stochastic (a fresh minibatch per call)."""

    damping: float = 0.0
    scale: float | None = None
    max_iter: int = 1000
    tol: float = 1e-6
    recursion_damping: float | None = None
    scale_factor: float = 1.1
    power_iterations: int = 50
    seed: int = 0
    name: ClassVar[str] = "lissa"

    def __post_init__(self) -> None:
        _check_damping(self.damping)
        _check_tol(self.tol)
        _check_max_iter(self.max_iter)
        if self.scale is not None and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale={self.scale!r} must be a finite number > 0 (above H's top eigenvalue), "
                             f"or None to estimate it.")
        if self.recursion_damping is not None:
            if self.damping != 0:
                raise ValueError("give LiSSA either damping (effective, d·scale) or recursion_damping (d), "
                                 "not both.")
            if not (0 <= self.recursion_damping < 1):
                raise ValueError(f"recursion_damping={self.recursion_damping!r} must lie in [0, 1).")
        if not self.scale_factor > 1:
            raise ValueError(f"scale_factor={self.scale_factor!r} must be > 1 (scale above the top eigenvalue).")
        _check_max_iter(self.power_iterations)

    def solve(self, h: Operator, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        _check_rhs(b)
        start, matvec = time.perf_counter(), _Counted(h)
        scale = self.scale
        if scale is None:
            generator = generator or torch.Generator().manual_seed(self.seed)
            scale = self.scale_factor * top_eigenvalue(matvec, len(b), iterations=self.power_iterations,
                                                       generator=generator, device=b.device, dtype=b.dtype)
            if not scale > 0:
                raise ValueError(f"H's top eigenvalue estimate is {scale / self.scale_factor:.3g} <= 0: LiSSA "
                                 f"needs a positive definite H (use Gauss-Newton curvature or damping).")
        d = self.recursion_damping if self.recursion_damping is not None else self.damping / scale
        if not d < 1:
            raise ValueError(f"damping={self.damping} is not below scale={scale:.4g}: LiSSA's recursion needs "
                             f"damping/scale < 1; raise scale or lower damping.")
        u, change, iterations = b.clone(), float("nan"), 0
        for it in range(1, self.max_iter + 1):
            new = b + (1 - d) * u - matvec(u) / scale
            change = float((new - u).norm() / new.norm().clamp_min(1e-30))
            u, iterations = new, it
            if not math.isfinite(change):
                raise ValueError(f"LiSSA diverged at iteration {it}: scale={scale} is below H's largest "
                                 f"eigenvalue; raise it (see top_eigenvalue).")
            if change <= self.tol:
                break
        x, damping = u / scale, d * scale
        residual = _relative(b, b - matvec(x) - damping * x)
        return x, SolveStats(self.name, iterations, residual, change <= self.tol, False, matvec.calls,
                             time.perf_counter() - start, damping, change=change, scale=scale)


SOLVER_REGISTRY: dict[str, type[Solver]] = {"exact": Exact, "cg": CG, "lissa": LiSSA}


def get_solver(solver: Solver | str, **options: Any) -> Solver:
    """A solver object: `solver` itself, or the preset named "exact", "cg" or "lissa" built with `options`
    (its dataclass fields, e.g. damping, tol, max_iter); options with a solver object are an error."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} go into the solver object itself, e.g. "
                             f"{type(solver).__name__}({', '.join(f'{k}=…' for k in options)}).")
        return solver
    if not isinstance(solver, str) or solver not in SOLVER_REGISTRY:
        raise ValueError(f"solver={solver!r} is neither a Solver object nor one of {list(SOLVER_REGISTRY)}.")
    cls = SOLVER_REGISTRY[solver]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"solver {solver!r} takes no option {unknown}; it takes {sorted(known)}.")
    return cls(**options)


def solve_exact(matrix: Tensor, b: Tensor, damping: float = 0.0) -> tuple[Tensor, dict]:
    """`Exact(damping).solve(matrix, b)` with the stats as a dict (the former function API)."""
    x, stats = Exact(damping).solve(matrix, b)
    return x, stats.as_dict()


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, *, damping: float = 0.0,
                       tol: float = 1e-6, max_iter: int = 100) -> tuple[Tensor, dict]:
    """`CG(damping, tol, max_iter).solve(matvec, b)` with the stats as a dict (the former function API)."""
    x, stats = CG(damping, tol, max_iter).solve(matvec, b)
    return x, stats.as_dict()


def lissa(matvec: Callable[[Tensor], Tensor], b: Tensor, *, damping: float = 0.0, scale: float,
          iterations: int = 1000, tol: float = 1e-6) -> tuple[Tensor, dict]:
    """`LiSSA(recursion_damping=damping, scale, max_iter=iterations, tol).solve(matvec, b)` with the stats as
    a dict (the former function API: `damping` is the recursion's d; the effective damping is d·scale)."""
    x, stats = LiSSA(scale=scale, max_iter=iterations, tol=tol, recursion_damping=damping).solve(matvec, b)
    return x, stats.as_dict()


def top_eigenvalue(matvec: Callable[[Tensor], Tensor], dim: int, *, iterations: int = 50,
                   generator: torch.Generator | None = None, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> float:
    """Largest-magnitude eigenvalue of the symmetric operator `matvec` by power iteration."""
    v = torch.randn(dim, generator=generator, dtype=dtype).to(device or "cpu")
    v = v / v.norm()
    value = 0.0
    for _ in range(iterations):
        w = matvec(v)
        value = float(v @ w)
        v = w / w.norm().clamp_min(1e-30)
    return value
