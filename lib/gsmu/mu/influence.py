"""Influence machinery: summed losses, gradients, Hessian-vector products and inverse-HVP solvers.

Implements the linear-algebra core of *Machine Unlearning of Features and Labels* (Warnecke et al.,
NDSS 2023), Section 4: the gradient difference `G` over affected rows, products with the Hessian of the
total training loss `H = ∇²(Σ ℓ + λ/2‖θ‖²)` (exact, forward-over-reverse with `torch.func`, or the
positive semi-definite Gauss-Newton matrix `Jᵀ H_out J` from a double vector-Jacobian product), and the
solvers for `H⁻¹G`: a dense solve, conjugate gradient and LiSSA. Everything acts on a flat vector over a
chosen subset of the model's parameters (`ParamSpace`, chosen by name prefixes), for any torch model whose
loss is a sum over examples (`Objective`); the L2 term is handled in one place so G, H and residuals agree.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def loss_gradient(model: nn.Module, objective: Objective, space: ParamSpace, data: Batch,
                  batch_size: int = 1024) -> Tensor:
    """∇θ Σ_{(x,y)∈data} ℓ — the summed data-loss gradient over the selected parameters (no L2 term)."""
    device = _device_of(model)
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
    device = _device_of(model)
    _, loss = _functional(model, objective, space)
    theta = space.flat(model)
    value, total = torch.zeros((), dtype=theta.dtype, device=device), torch.zeros_like(theta)
    with _functorch_backends(model):
        for x, y in _chunks(data, batch_size, device):
            grad, val = torch.func.grad_and_value(loss)(theta, x, y)
            value, total = value + val.detach(), total + grad.detach()
    return value, total


def gradient_difference(model: nn.Module, objective: Objective, space: ParamSpace, z: Batch,
                        z_tilde: Batch, batch_size: int = 1024) -> Tensor:
    """G = Σ_{z̃} ∇ℓ(z̃, θ) − Σ_{z} ∇ℓ(z, θ): one backward of the loss difference per chunk of rows."""
    device = _device_of(model)
    _, loss = _functional(model, objective, space)
    theta = space.flat(model)
    total = torch.zeros_like(theta)
    with _functorch_backends(model):
        for (x, y), (xt, yt) in zip(_chunks(z, batch_size, device), _chunks(z_tilde, batch_size, device)):
            total += torch.func.grad(lambda t: loss(t, xt, yt) - loss(t, x, y))(theta).detach()
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


def solve_exact(matrix: Tensor, b: Tensor, damping: float = 0.0) -> tuple[Tensor, dict]:
    """x = (H + damping·I)⁻¹ b by a dense solve; stats hold the relative residual ‖b − Ax‖/‖b‖."""
    a = matrix + damping * torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)
    x = torch.linalg.solve(a, b)
    rel = float((b - a @ x).norm() / b.norm().clamp_min(1e-30))
    return x, {"solver": "exact", "iterations": 1, "residual": rel, "converged": True,
               "negative_curvature": False}


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, *, damping: float = 0.0,
                       tol: float = 1e-6, max_iter: int = 100) -> tuple[Tensor, dict]:
    """x ≈ (H + damping·I)⁻¹ b by conjugate gradient with `matvec(v) = H v`.

    Stops when the relative residual ‖b − Ax‖/‖b‖ ≤ tol, after `max_iter` iterations, or as soon as a
    search direction has non-positive curvature (H is not positive definite there; the iterate so far is
    returned and `negative_curvature` is set — add damping or use Gauss-Newton).
    """
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"tol={tol} must be > 0 and max_iter={max_iter} >= 1.")
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    b_norm = float(b.norm()) or 1.0
    stats = {"solver": "cg", "iterations": 0, "residual": float(rr.sqrt()) / b_norm, "converged": False,
             "negative_curvature": False}
    for it in range(1, max_iter + 1):
        if stats["residual"] <= tol:
            break
        ap = matvec(p) + damping * p
        curv = p @ ap
        if curv <= 0:
            stats["negative_curvature"] = True
            break
        alpha = rr / curv
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        stats["iterations"] = it
        stats["residual"] = float(rr.sqrt()) / b_norm
    stats["converged"] = stats["residual"] <= tol
    return x, stats


def lissa(matvec: Callable[[Tensor], Tensor], b: Tensor, *, damping: float = 0.0, scale: float,
          iterations: int = 1000, tol: float = 1e-6) -> tuple[Tensor, dict]:
    """The authors' LiSSA recursion `u ← b + (1 − damping)·u − H u / scale`, returning `u / scale`.

    Its fixed point is `u/scale = (H + damping·scale·I)⁻¹ b`: the *effective* damping is
    `damping·scale` (reported in the stats). It converges when `scale` exceeds H's largest eigenvalue
    (`top_eigenvalue`), at the rate `1 − damping − λ_min/scale` per step — slowly for ill-conditioned H.
    `matvec` may be stochastic (a fresh minibatch per call), as in the original algorithm. Stops when the
    relative change of `u` falls below `tol`.
    """
    if scale <= 0 or not (0 <= damping < 1) or iterations < 1:
        raise ValueError(f"lissa needs scale > 0 (got {scale}), 0 <= damping < 1 (got {damping}) and "
                         f"iterations >= 1 (got {iterations}).")
    u = b.clone()
    stats = {"solver": "lissa", "iterations": 0, "effective_damping": damping * scale, "converged": False}
    for it in range(1, iterations + 1):
        new = b + (1 - damping) * u - matvec(u) / scale
        change = float((new - u).norm() / new.norm().clamp_min(1e-30))
        u = new
        stats["iterations"] = it
        if not math.isfinite(change):
            raise ValueError(f"LiSSA diverged at iteration {it}: scale={scale} is below H's largest "
                             f"eigenvalue; raise it (see top_eigenvalue).")
        if change <= tol:
            stats["converged"] = True
            break
    stats["change"] = change
    return u / scale, stats


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
