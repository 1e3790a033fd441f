"""Machine unlearning of features and labels: requests, closed-form updates, baselines and certification.

Implements *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023): an unlearning
request `(Z, Z̃)` (Section 3: affected rows and their corrected versions — features zeroed, labels fixed,
tokens replaced), the first-order update `θ − τG` and the second-order update `θ − H⁻¹G` (Section 4, with
H from the original data as in the paper or from the corrected data, exact or Gauss-Newton curvature,
dense / CG / LiSSA solvers, and an iterative variant), the baselines of Section 6 (retraining with a warm
start, fine-tuning on Z̃, SISA sharding, occlusion) and certified unlearning for L2-regularized logistic
regression (Section 5: loss perturbation `bᵀθ`, gradient residual, the σ that certifies (ε, δ)).
Every update returns a new model (the original is untouched; `device=None` keeps it on the original's
device) and a record of time and gradient evaluations (one per example whose gradient or Hessian-vector
product is evaluated). Models are used in their current mode: call `.eval()` first for dropout/BatchNorm.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .influence import (Batch, Curvature, Objective, ParamSpace, conjugate_gradient, gradient_difference,
                        gradient_residual, lissa, loss_gradient, solve_exact, top_eigenvalue,
                        value_and_gradient)
from ..base.runtime import check_choice, get_device


@dataclass(frozen=True)
class Request:
    """Affected rows `rows` (indices into the training data), their current values `z` and corrections
    `z_tilde`, each an (inputs, targets) pair with matching shapes. Build with the helpers below."""

    rows: Tensor
    z: Batch
    z_tilde: Batch

    def __post_init__(self) -> None:
        (x, y), (xt, yt) = self.z, self.z_tilde
        if len(self.rows) == 0:
            raise ValueError("the request is empty (Z has no rows): nothing to unlearn; check the rows or "
                             "features you selected.")
        if x.shape != xt.shape or y.shape != yt.shape:
            raise ValueError(f"Z and Z̃ differ in shape: inputs {tuple(x.shape)} vs {tuple(xt.shape)}, "
                             f"targets {tuple(y.shape)} vs {tuple(yt.shape)}; Z̃ must hold the same rows, "
                             f"corrected.")
        if not (len(x) == len(y) == len(self.rows)):
            raise ValueError(f"rows ({len(self.rows)}), inputs ({len(x)}) and targets ({len(y)}) must have "
                             f"the same length.")
        if len(torch.unique(self.rows)) != len(self.rows):
            raise ValueError("rows holds duplicate indices; each affected row must appear once.")

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, parts: int) -> list["Request"]:
        """The request cut into `parts` consecutive pieces of (almost) equal size."""
        if not (1 <= parts <= len(self)):
            raise ValueError(f"steps={parts} must lie in [1, {len(self)}] (the number of affected rows).")
        pieces = torch.arange(len(self)).tensor_split(parts)
        return [Request(self.rows[i], (self.z[0][i], self.z[1][i]), (self.z_tilde[0][i], self.z_tilde[1][i]))
                for i in pieces]


def _check_rows(rows: Sequence[int] | Tensor, n: int) -> Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index the {n} data rows (0 … {n - 1}); got {rows.min()} … {rows.max()}.")
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
    rows = _check_rows(rows, len(x))
    return Request(rows, (x[rows], y[rows]), (cleaned[rows], y[rows]))


def fix_labels(x: Tensor, y_wrong: Tensor, y_clean: Tensor, rows: Sequence[int] | Tensor,
               num_classes: int | None = None) -> Request:
    """Request to relabel `rows` from `y_wrong` to `y_clean` (full-length label vectors)."""
    if y_wrong.shape != y_clean.shape or len(y_wrong) != len(x):
        raise ValueError(f"y_wrong {tuple(y_wrong.shape)} and y_clean {tuple(y_clean.shape)} must both be "
                         f"label vectors over the {len(x)} rows of x.")
    if num_classes is not None:
        for name, y in (("y_wrong", y_wrong), ("y_clean", y_clean)):
            if y.min() < 0 or y.max() >= num_classes:
                raise ValueError(f"{name} holds labels outside [0, {num_classes - 1}] "
                                 f"(num_classes={num_classes}).")
    rows = _check_rows(rows, len(x))
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
    """The training data with the request's rows replaced by their corrections (a copy)."""
    x, y = data[0].clone(), data[1].clone()
    rows = _check_rows(request.rows, len(x))
    x[rows], y[rows] = request.z_tilde[0].to(x), request.z_tilde[1].to(y)
    return x, y


def _new_model(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    # device=None keeps the original's device, so data and model stay together.
    return copy.deepcopy(model).to(next(model.parameters()).device if device is None else get_device(device))


def first_order(model: nn.Module, objective: Objective, request: Request, *, tau: float,
                params: Sequence[str] | None = None, steps: int = 1, batch_size: int = 1024,
                device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """θ_new = θ* − τ·G (the paper's first-order update); `steps` > 1 unlearns the rows in that many
    pieces, recomputing G at the current parameters after each piece (steps=1 is the plain update)."""
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau={tau!r} (the unlearning rate) must be a finite number > 0.")
    pieces = request.split(steps)
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    for piece in pieces:
        g = gradient_difference(new, objective, space, piece.z, piece.z_tilde, batch_size)
        space.assign(new, space.flat(new) - tau * g)
    record = {"method": "first-order", "seconds": time.perf_counter() - start,
              "grad_evals": 2 * len(request), "steps": steps, "tau": tau}
    return new, record


HESSIANS = ("original", "corrected")
SOLVERS = ("exact", "cg", "lissa")


def second_order(model: nn.Module, objective: Objective, request: Request, data: Batch, *,
                 params: Sequence[str] | None = None, hessian: str = "original", curvature: str = "exact",
                 solver: str = "cg", damping: float = 0.0, tol: float = 1e-6, max_iter: int = 200,
                 lissa_scale: float | None = None, lissa_iterations: int = 1000, hessian_rows: int | None = None,
                 step: float = 1.0, steps: int = 1, batch_size: int = 1024, seed: int = 0,
                 device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """θ_new = θ* − step·(H + damping·I)⁻¹ G, H the Hessian of the total training loss at θ*.

    `hessian="original"`: H over the training data `data` as it was (the paper). `"corrected"`: H over
    the data with the request applied — then the update is one Newton step on the corrected objective
    (taking ∇L(θ*; D) = 0). `curvature`: "exact" or "gauss-newton" (PSD, for non-convex models).
    `solver`: "exact" (dense, small subsets), "cg" (stops on negative curvature) or "lissa" (`lissa_scale`
    defaults to 1.1 × the top eigenvalue of H; effective damping `damping·lissa_scale`).
    `hessian_rows`: estimate H from a fixed random subsample of that many rows (drawn with `seed`).
    `steps` > 1 unlearns the rows in pieces, re-linearizing (G and H) at the current parameters after each
    piece, with H of the data corrected so far for `hessian="corrected"`; steps=1 is the plain update.
    """
    check_choice("hessian", hessian, HESSIANS)
    check_choice("curvature", curvature, ("exact", "gauss-newton"))
    check_choice("solver", solver, SOLVERS)
    if damping < 0 or step <= 0:
        raise ValueError(f"damping={damping} must be >= 0 and step={step} > 0.")
    _check_rows(request.rows, len(data[0]))
    pieces = request.split(steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    evals, stats = 2 * len(request), []
    current = data
    for piece in pieces:
        if hessian == "corrected":
            current = apply_request(current, piece)
        g = gradient_difference(new, objective, space, piece.z, piece.z_tilde, batch_size)
        h = Curvature(new, objective, space, current, kind=curvature, rows=hessian_rows,
                      batch_size=batch_size, generator=generator)
        delta, info = _inverse_hvp(h, g, solver, damping, tol, max_iter, lissa_scale, lissa_iterations,
                                   generator)
        space.assign(new, space.flat(new) - step * delta)
        evals += h.evals
        stats.append(info)
    record = {"method": f"second-order ({hessian} H)", "seconds": time.perf_counter() - start,
              "grad_evals": evals, "steps": steps, "solver": stats}
    return new, record


def _inverse_hvp(h: Curvature, g: Tensor, solver: str, damping: float, tol: float, max_iter: int,
                 lissa_scale: float | None, lissa_iterations: int,
                 generator: torch.Generator) -> tuple[Tensor, dict]:
    if solver == "exact":
        return solve_exact(h.dense(), g, damping)
    if solver == "cg":
        return conjugate_gradient(h, g, damping=damping, tol=tol, max_iter=max_iter)
    scale = lissa_scale or 1.1 * top_eigenvalue(h, h.dim, generator=generator, device=g.device, dtype=g.dtype)
    return lissa(h, g, damping=damping, scale=scale, iterations=lissa_iterations, tol=tol)


def fit_lbfgs(model: nn.Module, objective: Objective, data: Batch, *, params: Sequence[str] | None = None,
              linear: Tensor | None = None, max_iter: int = 500, tol: float = 1e-10,
              batch_size: int = 8192) -> dict:
    """Minimize Σℓ + l2/2‖θ‖² (+ linearᵀθ) over `params` on `data` in place with full-batch L-BFGS
    (strong-Wolfe line search) — exact training for small convex models such as logistic regression."""
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
    return {"seconds": time.perf_counter() - start, "grad_evals": calls[0] * len(data[0]),
            "iterations": opt.state[theta]["n_iter"]}


def retrain(model: nn.Module, objective: Objective, corrected: Batch, *, warm_start: bool = True,
            params: Sequence[str] | None = None, linear: Tensor | None = None, seed: int = 0,
            max_iter: int = 500, tol: float = 1e-10,
            device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Retraining on the corrected data with L-BFGS, from θ* (`warm_start`) or re-initialized weights."""
    new = _new_model(model, device)
    if not warm_start:
        torch.manual_seed(seed)
        for module in new.modules():
            if hasattr(module, "reset_parameters") and module is not new:
                module.reset_parameters()
    record = fit_lbfgs(new, objective, corrected, params=params, linear=linear, max_iter=max_iter, tol=tol)
    record["method"] = "retraining" + (" (warm start)" if warm_start else "")
    return new, record


def fine_tune(model: nn.Module, objective: Objective, request: Request, *, lr: float, epochs: int = 1,
              batch_size: int = 32, params: Sequence[str] | None = None, seed: int = 0,
              device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """SGD on the mean loss of the corrected rows Z̃ only (the paper's fine-tuning baseline)."""
    if lr <= 0 or epochs < 1 or batch_size < 1:
        raise ValueError(f"fine_tune needs lr > 0 (got {lr}), epochs >= 1 (got {epochs}), batch_size >= 1.")
    start = time.perf_counter()
    new = _new_model(model, device)
    space = ParamSpace(new, params)
    generator = torch.Generator().manual_seed(seed)
    x, y = request.z_tilde
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            g = loss_gradient(new, objective, space, (x[idx], y[idx]), batch_size) / len(idx)
            space.assign(new, space.flat(new) - lr * g)
    record = {"method": "fine-tuning", "seconds": time.perf_counter() - start,
              "grad_evals": epochs * len(x)}
    return new, record


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Predicted labels: the sign of a single logit (binary models) or the arg-max over classes."""
    device = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    return (out > 0).long() if out.ndim == 1 else out.argmax(-1)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of rows predicted correctly (binary single-logit or multi-class models)."""
    return float((predict(model, x) == y.reshape(-1)).float().mean())


@torch.no_grad()
def param_distance(a: nn.Module, b: nn.Module) -> float:
    """‖θ_a − θ_b‖₂ over all parameters (e.g. an update against the retrained model)."""
    return float(torch.cat([(p - q.to(p)).reshape(-1) for p, q in zip(a.parameters(), b.parameters())]).norm())


class Sisa:
    """SISA training (Bourtoule et al.): `shards` disjoint random shards, one model each, majority vote.

    Unlearning retrains only the shards that hold affected rows, on their corrected rows.
    `fit(model, data)` trains a model in place; `build()` makes a fresh one.
    """

    def __init__(self, build: Callable[[], nn.Module], fit: Callable[[nn.Module, Batch], object],
                 data: Batch, shards: int, seed: int = 0):
        n = len(data[0])
        if not (1 <= shards <= n):
            raise ValueError(f"shards={shards} must lie in [1, {n}].")
        self.build, self.fit, self.data = build, fit, (data[0].clone(), data[1].clone())
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self.shard_of = torch.empty(n, dtype=torch.long)
        for s, idx in enumerate(order.tensor_split(shards)):
            self.shard_of[idx] = s
        self.models = [self._train(s) for s in range(shards)]

    def _train(self, shard: int) -> nn.Module:
        idx = (self.shard_of == shard).nonzero().reshape(-1)
        model = self.build()
        self.fit(model, (self.data[0][idx], self.data[1][idx]))
        return model

    def predict(self, x: Tensor) -> Tensor:
        votes = torch.stack([predict(m, x) for m in self.models])
        return torch.mode(votes, dim=0).values

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return float((self.predict(x) == y).float().mean())

    def unlearn(self, request: Request) -> dict:
        """Apply the request and retrain the affected shards in place; returns a record."""
        start = time.perf_counter()
        self.data = apply_request(self.data, request)
        touched = torch.unique(self.shard_of[request.rows]).tolist()
        for s in touched:
            self.models[s] = self._train(s)
        return {"method": "SISA", "seconds": time.perf_counter() - start, "shards_retrained": len(touched),
                "grad_evals": None}


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
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.func.vmap(lambda xi, yi: objective(model, xi[None], yi[None]))(x.to(device), y.to(device)).cpu()


def best_first_order(model: nn.Module, objective: Objective, request: Request, corrected: Batch,
                     taus: Sequence[float], **kwargs) -> tuple[nn.Module, dict]:
    """First-order update with the τ of `taus` that leaves the smallest gradient residual on `corrected`
    (the residual needs no retrained model; its extra passes over the data are counted in the record)."""
    if len(taus) == 0:
        raise ValueError("taus is empty: give at least one unlearning rate.")
    start = time.perf_counter()
    tried = [first_order(model, objective, request, tau=tau, **kwargs) for tau in taus]
    residuals = [gradient_residual(m, objective, corrected) for m, _ in tried]
    best = min(range(len(taus)), key=residuals.__getitem__)
    new, record = tried[best]
    record.update(seconds=time.perf_counter() - start,
                  grad_evals=len(taus) * (record["grad_evals"] + len(corrected[0])))
    return new, record


def compare_methods(model: nn.Module, objective: Objective, data: Batch, request: Request, test: Batch, *,
                    taus: Sequence[float], fine_tune_lr: float, sisa: Sisa | None = None,
                    solver: str = "exact", seed: int = 0) -> tuple[list[dict], dict[str, nn.Module]]:
    """All unlearning methods of the paper's Section 6 on one request, side by side.

    `test` must already look like the corrected data (e.g. features removed). Rows hold the method, test
    accuracy, gradient residual on the corrected training data, distance to the retrained model, gradient
    evaluations and seconds; SISA (an ensemble) has no single θ, so no residual or distance.
    """
    corrected = apply_request(data, request)
    runs = {"occlusion": (copy.deepcopy(model), {"seconds": 0.0, "grad_evals": 0})}
    runs["retraining"] = retrain(model, objective, corrected)
    runs["fine-tuning"] = fine_tune(model, objective, request, lr=fine_tune_lr, seed=seed)
    runs["first-order"] = best_first_order(model, objective, request, corrected, taus)
    for hessian in HESSIANS:
        runs[f"second-order ({hessian} H)"] = second_order(model, objective, request, data, hessian=hessian,
                                                            solver=solver, seed=seed)
    target = runs["retraining"][0]
    rows = [{"method": name, "accuracy": accuracy(m, *test),
             "residual": gradient_residual(m, objective, corrected), "distance": param_distance(m, target),
             "grad_evals": rec["grad_evals"], "seconds": rec["seconds"]} for name, (m, rec) in runs.items()]
    if sisa is not None:
        ensemble = copy.deepcopy(sisa)
        rec = ensemble.unlearn(request)
        rows.append({"method": "SISA", "accuracy": ensemble.accuracy(*test), "residual": float("nan"),
                     "distance": float("nan"), "grad_evals": rec["grad_evals"], "seconds": rec["seconds"]})
    return rows, {name: m for name, (m, _) in runs.items()}


def certified_run(model: nn.Module, objective: Objective, data: Batch, corrected: Batch,
                  update: Callable[[nn.Module], nn.Module], *, sigma: float, epsilon: float, delta: float,
                  seed: int) -> tuple[nn.Module, dict]:
    """One run of certified unlearning: train on `data` with loss perturbation b ~ N(0, σ²I) (L-BFGS from
    `model`), apply `update` to the noisy model, and measure the residual β of the perturbed objective on
    `corrected` — the quantity the (ε, δ) bound is about (the noiseless residual under-estimates it)."""
    b = perturbation(ParamSpace(model).dim, sigma, torch.Generator().manual_seed(seed))
    noisy, _ = retrain(model, objective, data, linear=b)
    new = update(noisy)
    beta = gradient_residual(new, objective, corrected, linear=b)
    return new, {"sigma": sigma, "residual": beta, "certified": is_certified(beta, sigma, epsilon, delta)}
