"""Kronecker-factored curvature (K-FAC, EK-FAC) of a network head: an amortized inverse-HVP solver and a CG
preconditioner.

*Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023), Section 4, updates θ* − (H + d·I)⁻¹G
with the same H for every request on one trained model. For a CNN the update is run on the dense head
(`poison._head_modules`) over the features the frozen body computes once; its H is too large to factorize
densely in general (fc1..out of the MNIST CNN: 173k parameters), so this module approximates the Gauss-Newton
matrix (= the true Fisher for softmax cross-entropy) of a head of `nn.Linear` layers joined by elementwise
activations by K-FAC (Martens & Grosse, "Optimizing neural networks with Kronecker-factored approximate
curvature", ICML 2015): block-diagonal over layers, each block `(1/n) G ⊗ A` with `A = Σᵢ ãᵢãᵢᵀ` (the layer's
inputs with a 1 appended for the bias) and `G = Σᵢ E_y[gᵢgᵢᵀ]` (gᵢ the gradient of the summed cross-entropy in
the layer's outputs, with y drawn from the model's own predictive distribution — the exact expectation over
the classes by default, or `samples` drawn labels). A and G are eigendecomposed once, so every damping costs
the same two small matrix products per layer; `eigenvalues="ekfac"` replaces the Kronecker eigenvalues by
EK-FAC's corrected ones (George et al., NeurIPS 2018: the exact diagonal of each layer's block in the
Kronecker eigenbasis). `KfacSolver` applies the block-diagonal inverse directly (the shape of `Factorized`,
an approximation of H⁻¹G); `Kfac.preconditioner(damping)` is r ↦ M⁻¹r for `CG(preconditioner=...)`, which
keeps CG's solve of the true H. One-off and per-request costs (seconds, multiply-accumulates) are kept apart
in a `FactorizationCost` and `solve_macs`; `curvature.break_even` counts the requests that amortize it.
K-FAC is only as good as its two approximations (no cross-layer blocks, independent factors per block): on
notebook 07's MNIST head (`bench/kfac_head.py`) the Gauss-Newton matrix is a few dozen large eigenvalues that
couple fc3 and out, so even its exact per-layer blocks precondition CG no better than none and, as a direct
solve, restore less of the poisoning gap than CG; K-FAC's Kronecker factors then misplace the curvature
within each block enough that the direct step overshoots (it undoes less than nothing) and K-FAC PCG takes
more iterations than plain CG — there the low-rank `Nystrom` preconditioner is the one that fits.

Why not `kronfluence`: it computes pairwise influence scores (query gradient × preconditioned training
gradient) through its own analysis and storage pipeline; the unlearning update needs (K + d·I)⁻¹ applied to
an arbitrary vector G in the coordinates of `ParamSpace`, and a preconditioner callable for our CG — a few
dozen lines on top of two eigendecompositions per layer, tested here against independent dense matrices.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..base.runtime import check_choice, get_device
from .curvature import FactorizationCost
from .influence import (Batch, Curvature, Objective, Operator, ParamSpace, Solver, SolveStats, _check_damping,
                        _check_rhs, _Counted, _relative, cross_entropy_sum)

FISHERS = ("exact", "sampled")
EIGENVALUES = ("kfac", "ekfac")
# Elementwise activations: the Jacobian of each is diagonal, so the layers' inputs and output gradients
# are all K-FAC needs (a BatchNorm or a convolution between the layers is not covered).
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity)


@dataclass
class KfacLayer:
    """One `nn.Linear` of the head: its factors, their eigendecompositions and where its parameters sit in
    the flat vector. `positions[i, j]` is the flat index of W̃[i, j], W̃ = [weight | bias] (out × width)."""

    name: str
    out_features: int
    width: int  # in_features (+ 1 with a bias)
    bias: bool
    a: Tensor  # Σ ãᵢãᵢᵀ, width × width
    g: Tensor  # Σ E_y[gᵢgᵢᵀ], out × out
    positions: Tensor
    qa: Tensor = field(init=False, repr=False)
    qg: Tensor = field(init=False, repr=False)
    eigenvalues: Tensor = field(init=False, repr=False)  # out × width: the block's eigenvalues in the Q_G ⊗ Q_A basis

    def block(self) -> Tensor:
        """The layer's dense K-FAC block (without damping) in W̃'s row-major order."""
        q = torch.kron(self.qg, self.qa)
        return q @ torch.diag(self.eigenvalues.reshape(-1)) @ q.T


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The head's modules in forward order; ValueError unless it is an nn.Sequential (nested allowed) of
    Linear layers and elementwise activations."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential of nn.Linear layers and elementwise activations (e.g. "
                         f"poison._head_modules(cnn, 'head')); got {type(model).__name__}.")
    leaves = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        if not isinstance(module, (nn.Linear,) + ACTIVATIONS):
            raise ValueError(f"model module {name!r} is {type(module).__name__}: K-FAC here covers nn.Linear "
                             f"layers and elementwise activations ({', '.join(a.__name__ for a in ACTIVATIONS)}); "
                             f"take the head after it, or use CG with the Nyström preconditioner.")
        leaves.append((name, module))
    if not any(isinstance(m, nn.Linear) for _, m in leaves):
        raise ValueError("model holds no nn.Linear layer: nothing to factorize.")
    return leaves


def _positions(space: ParamSpace, name: str, layer: nn.Linear) -> Tensor:
    """Flat indices of W̃ = [weight | bias] (row-major) in `space`: weight (out, in) row-major, then bias."""
    offsets = dict(zip(space.names, np.cumsum([0] + space.sizes[:-1]).tolist()))
    prefix = f"{name}." if name else ""
    pos = offsets[prefix + "weight"] + torch.arange(layer.out_features)[:, None] * layer.in_features \
        + torch.arange(layer.in_features)[None, :]
    if layer.bias is not None:
        pos = torch.cat([pos, offsets[prefix + "bias"] + torch.arange(layer.out_features)[:, None]], 1)
    return pos


def _forward(leaves: list[tuple[str, nn.Module]], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The head's logits, each Linear's input and its output (kept in the autograd graph)."""
    inputs, outputs = [], []
    h = x
    for _, module in leaves:
        if isinstance(module, nn.Linear):
            inputs.append(h.detach())
            h = module(h)
            outputs.append(h)
        else:
            h = module(h)
    return h, inputs, outputs


def _with_ones(a: Tensor, bias: bool) -> Tensor:
    return torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1) if bias else a


class Kfac:
    """K-FAC (or EK-FAC) of the Gauss-Newton matrix of the summed cross-entropy of a head over `data`,
    built once (`Kfac.build`) and reused for every request: `matrix()` (dense, for checks), `matvec`,
    `solve(b, damping)` = (K + (damping + l2)·I)⁻¹ b, `preconditioner(damping)`. The objective's L2 term
    `l2·I` is added to every damping, as `Curvature` adds it to H."""

    def __init__(self, layers: list[KfacLayer], *, names: tuple[str, ...], theta: Tensor, rows: int, l2: float,
                 fisher: str, eigenvalues: str, cost: FactorizationCost):
        self.layers, self.names, self.theta, self.rows, self.l2 = layers, names, theta, rows, l2
        self.fisher, self.eigenvalue_kind, self.cost = fisher, eigenvalues, cost
        self.dim = len(theta)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Sequential, objective: Objective, data: Batch, *, fisher: str = "exact",
              eigenvalues: str = "kfac", samples: int = 1, seed: int = 0, batch_size: int = 4096,
              device: str | torch.device | None = None) -> "Kfac":
        """Factorize the head `model` (an nn.Sequential of Linear layers and elementwise activations, whose
        inputs are `data[0]`: e.g. `poison.head_inputs`) at its current parameters. `fisher="exact"`: the
        expectation over the C classes of the predictive distribution (C backward passes of the head per
        row — cheap for 10 classes); `"sampled"`: `samples` labels per row drawn with `seed` (the usual
        K-FAC estimate). `data[1]` (the training labels) is not used: the true Fisher needs none. `device`: where
        the head's forward and backward passes run (default: the head's own device, where it must live); the
        factors are accumulated and kept on the CPU in float64."""
        check_choice("fisher", fisher, FISHERS)
        check_choice("eigenvalues", eigenvalues, EIGENVALUES)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples={samples!r} must be an integer >= 1 (labels drawn per row).")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
        if not isinstance(objective, Objective) or objective.criterion is not cross_entropy_sum \
                or objective.forward is not None:
            raise ValueError("objective must be Objective(cross_entropy_sum, l2=…) with no forward adapter (the "
                             "summed softmax cross-entropy, whose Gauss-Newton matrix is the true Fisher K-FAC "
                             "approximates); use CG for other objectives.")
        leaves = _leaves(model)
        linears = [(n, m) for n, m in leaves if isinstance(m, nn.Linear)]
        space = ParamSpace(model)
        own = {f"{n}.{p}" if n else p for n, m in linears for p, _ in m.named_parameters()}
        if set(space.names) != own:
            raise ValueError(f"model has trainable parameters {sorted(set(space.names) - own)} outside its "
                             f"Linear layers; K-FAC covers Linear weights and biases only.")
        x, y = data
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != linears[0][1].in_features or len(x) == 0:
            raise ValueError(f"data[0] must be the head's inputs, shape (rows, {linears[0][1].in_features}); got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}.")
        if len(y) != len(x):
            raise ValueError(f"data holds {len(x)} inputs but {len(y)} targets.")
        device = get_device(device) if device is not None else next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        n = len(x)
        start = time.perf_counter()
        widths = [m.in_features + (m.bias is not None) for _, m in linears]
        a = [torch.zeros(w, w, dtype=torch.float64) for w in widths]
        g = [torch.zeros(m.out_features, m.out_features, dtype=torch.float64) for _, m in linears]
        head_macs = sum(m.in_features * m.out_features for _, m in linears)
        macs = 0.0
        for chunk in range(0, n, batch_size):
            inputs, grads, weights = cls._pass(leaves, x[chunk:chunk + batch_size].to(device), fisher, samples,
                                               generator)
            rows = len(inputs[0])
            # Forward once per row, one backward (≈ 2 forwards) per output vector and row.
            macs += rows * head_macs * (1 + 2 * len(grads))
            for i, (_, m) in enumerate(linears):
                at = _with_ones(inputs[i], m.bias is not None)
                a[i] += at.T @ at
                for gv, w in zip(grads, weights):
                    g[i] += (gv[i] * w).T @ gv[i]
                macs += rows * at.shape[1] ** 2 + len(grads) * rows * m.out_features ** 2
        layers = [KfacLayer(name, m.out_features, widths[i], m.bias is not None, a[i], g[i],
                            _positions(space, name, m))
                  for i, (name, m) in enumerate(linears)]
        form_seconds = time.perf_counter() - start
        start = time.perf_counter()
        eig_macs = 0.0
        for layer in layers:
            # eigh once per factor: every damping then costs two products per layer (no refactorization).
            ea, layer.qa = torch.linalg.eigh(layer.a)
            eg, layer.qg = torch.linalg.eigh(layer.g)
            # Round-off can leave tiny negative eigenvalues of these PSD sums; they are zero.
            layer.eigenvalues = torch.outer(eg.clamp_min(0), ea.clamp_min(0)) / n
            eig_macs += (4 / 3 + 1) * (layer.width ** 3 + layer.out_features ** 3)
        eig_seconds = time.perf_counter() - start
        if eigenvalues == "ekfac":
            start = time.perf_counter()
            corrected = [torch.zeros(l.out_features, l.width, dtype=torch.float64) for l in layers]
            for chunk in range(0, n, batch_size):
                inputs, grads, weights = cls._pass(leaves, x[chunk:chunk + batch_size].to(device), fisher,
                                                   samples, generator)
                for i, layer in enumerate(layers):
                    # The diagonal of Σᵢ E_y[(gᵢgᵢᵀ) ⊗ (ãᵢãᵢᵀ)] in the Q_G ⊗ Q_A basis: Σ (Q_Gᵀg)² ⊗ (Q_Aᵀã)².
                    at = _with_ones(inputs[i], layer.bias) @ layer.qa
                    for gv, w in zip(grads, weights):
                        gt = gv[i] @ layer.qg
                        corrected[i] += (gt ** 2 * w).T @ at ** 2
                    rows = len(at)
                    macs += rows * layer.width ** 2 + len(grads) * rows * (layer.out_features ** 2
                                                                           + layer.out_features * layer.width)
                macs += len(inputs[0]) * head_macs * (1 + 2 * len(grads))
            for layer, values in zip(layers, corrected):
                layer.eigenvalues = values
            form_seconds += time.perf_counter() - start
        cost = FactorizationCost(eigenvalues, form_seconds, eig_seconds, macs, eig_macs)
        theta = space.flat(model).detach().to("cpu", torch.float64)
        return cls(layers, names=tuple(space.names), theta=theta, rows=n, l2=objective.l2, fisher=fisher,
                   eigenvalues=eigenvalues, cost=cost)

    @staticmethod
    def _pass(leaves: list[tuple[str, nn.Module]], x: Tensor, fisher: str, samples: int,
              generator: torch.Generator) -> tuple[list[Tensor], list[list[Tensor]], list[Tensor]]:
        """Each Linear's inputs (float64, CPU) and, per output vector u, its output gradients Jᵀu with a
        per-row weight: u = e_c − p weighted p_c for every class c (exact), or u = e_y − p, y ~ p, weighted
        1/samples (sampled). Σ_u w·(Jᵀu)(Jᵀu)ᵀ is the row's Gauss-Newton factor E_y[ggᵀ] either way."""
        with torch.enable_grad():
            logits, inputs, outputs = _forward(leaves, x)
            p = torch.softmax(logits.detach().to(torch.float64), 1)
            classes = p.shape[1]
            if fisher == "exact":
                vectors = [(torch.eye(classes, dtype=torch.float64)[c] - p, p[:, c:c + 1]) for c in range(classes)]
            else:
                draws = torch.multinomial(p.cpu(), samples, replacement=True, generator=generator).to(p.device)
                vectors = [(torch.nn.functional.one_hot(draws[:, s], classes).to(p) - p,
                            torch.full((len(p), 1), 1.0 / samples, dtype=torch.float64, device=p.device))
                           for s in range(samples)]
            grads, weights = [], []
            for k, (u, w) in enumerate(vectors):
                gs = torch.autograd.grad(logits, outputs, grad_outputs=u.to(logits.dtype),
                                         retain_graph=k < len(vectors) - 1)
                grads.append([gv.detach().to("cpu", torch.float64) for gv in gs])
                weights.append(w.cpu())
        return [i.to("cpu", torch.float64) for i in inputs], grads, weights

    # -- products and solves -------------------------------------------------------------------------------
    def _check_vector(self, v: Tensor, what: str) -> None:
        if not isinstance(v, Tensor) or v.shape != (self.dim,):
            raise ValueError(f"{what} has shape {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}; "
                             f"this K-FAC is over {self.dim} parameters ({', '.join(self.names)}) — a flat "
                             f"vector over the head's ParamSpace.")

    def _shift(self, damping: float) -> float:
        _check_damping(damping)
        shift = damping + self.l2
        low = min(float(layer.eigenvalues.min()) for layer in self.layers)
        if not low + shift > 0:
            raise ValueError(f"damping={damping!r}: K-FAC + {shift:g}·I has eigenvalue {low + shift:.3g} <= 0 "
                             f"(a singular factor); give damping > 0.")
        return shift

    def _apply(self, v: Tensor, damping: float, inverse: bool) -> Tensor:
        shift = self._shift(damping) if inverse else damping + self.l2
        w = v.detach().to("cpu", torch.float64)
        out = torch.empty_like(w)
        for layer in self.layers:
            block = w[layer.positions]  # W̃-shaped: (G ⊗ A) vec_r(V) = vec_r(G V A)
            rotated = layer.qg.T @ block @ layer.qa
            scale = layer.eigenvalues + shift
            rotated = rotated / scale if inverse else rotated * scale
            out[layer.positions] = layer.qg @ rotated @ layer.qa.T
        return out.to(v)

    def matvec(self, v: Tensor, damping: float = 0.0) -> Tensor:
        """(K + (damping + l2)·I) v."""
        self._check_vector(v, "v")
        _check_damping(damping)
        return self._apply(v, damping, inverse=False)

    def solve(self, b: Tensor, damping: float = 0.0) -> Tensor:
        """(K + (damping + l2)·I)⁻¹ b: per layer two rotations into the Kronecker eigenbasis and back."""
        self._check_vector(b, "b (the right-hand side)")
        return self._apply(b, damping, inverse=True)

    def matrix(self, damping: float = 0.0) -> Tensor:
        """The dense block-diagonal K + (damping + l2)·I in `ParamSpace` order (float64; for checks)."""
        _check_damping(damping)
        out = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for layer in self.layers:
            pos = layer.positions.reshape(-1)
            out[pos[:, None], pos[None, :]] = layer.block()
        return out + (damping + self.l2) * torch.eye(self.dim, dtype=torch.float64)

    def preconditioner(self, damping: float = 0.0) -> "KfacPreconditioner":
        """r ↦ (K + (damping + l2)·I)⁻¹ r for `CG(damping=damping, preconditioner=...)` (same damping)."""
        return KfacPreconditioner(self, damping)

    @property
    def solve_macs(self) -> float:
        """Multiply-accumulates of one solve (or product): per layer Q_Gᵀ V Q_A and back, 2·(o²w + o·w²)."""
        return float(sum(2 * (l.out_features ** 2 * l.width + l.out_features * l.width ** 2) for l in self.layers))

    def check(self, h: Curvature) -> None:
        """Raise unless `h` is over this K-FAC's parameters at its θ (its rows and kind may differ: K-FAC is
        an approximation of the Gauss-Newton matrix over the rows it was built on)."""
        if h.dim != self.dim or tuple(h.space.names) != self.names:
            raise ValueError(f"the curvature is over {h.dim} parameters ({', '.join(h.space.names)}); this K-FAC "
                             f"is over {self.dim} ({', '.join(self.names)}): build one for this head.")
        if not torch.allclose(h.theta.detach().to("cpu", torch.float64), self.theta, rtol=1e-6, atol=1e-7):
            raise ValueError("the curvature is at other parameter values than the K-FAC's θ: it serves one "
                             "trained model (steps=1); build another for the updated one.")


class KfacPreconditioner:
    """M⁻¹ r = (K + (damping + l2)·I)⁻¹ r: symmetric positive definite for damping + l2 > 0, as CG needs."""

    def __init__(self, kfac: Kfac, damping: float):
        if not isinstance(kfac, Kfac):
            raise TypeError(f"kfac must be a Kfac (Kfac.build(...)); got {type(kfac).__name__}.")
        kfac._shift(damping)  # fail now, not inside CG, when the shifted K-FAC is singular
        self.kfac, self.damping, self.dim = kfac, damping, kfac.dim
        self.calls = 0

    def __call__(self, r: Tensor) -> Tensor:
        self.kfac._check_vector(r, "r (the residual)")
        self.calls += 1
        return self.kfac._apply(r, self.damping, inverse=True)


@dataclass(frozen=True)
class KfacSolver(Solver):
    """Inverse-HVP solver from a `Kfac` (built once per model): x = (K + damping·I)⁻¹ b, no HVP and no
    iteration — an approximation of (H + damping·I)⁻¹ b (K-FAC drops the cross-layer blocks and factorizes
    each layer's). `measure`: the residual in the stats is measured against the curvature `h` handed in
    (one product with the true H, counted in `hvps`); False measures it against K itself (free, ~1e-16).
    `KfacSolver.build(model, objective, data, damping=…, **Kfac.build options)`."""

    kfac: Kfac = field(compare=False, repr=False)
    damping: float = 0.0
    measure: bool = True
    name: ClassVar[str] = "kfac"

    def __post_init__(self) -> None:
        if not isinstance(self.kfac, Kfac):
            raise TypeError(f"kfac must be a Kfac (Kfac.build(...)); got {type(self.kfac).__name__}.")
        self.kfac._shift(self.damping)

    @classmethod
    def build(cls, model: nn.Sequential, objective: Objective, data: Batch, *, damping: float = 0.0,
              measure: bool = True, **options) -> "KfacSolver":
        """`KfacSolver(Kfac.build(model, objective, data, **options), damping, measure)`."""
        _check_damping(damping)
        return cls(Kfac.build(model, objective, data, **options), damping, measure)

    def solve(self, h: Operator | None, b: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, SolveStats]:
        _check_rhs(b)
        start = time.perf_counter()
        kfac = self.kfac
        if isinstance(h, Curvature):
            kfac.check(h)
        elif isinstance(h, Tensor) and h.shape != (kfac.dim, kfac.dim):
            raise ValueError(f"H has shape {tuple(h.shape)}; this K-FAC is over {kfac.dim} parameters.")
        x = kfac.solve(b, self.damping)
        if self.measure and h is not None:
            matvec = _Counted(h)
            residual, hvps = _relative(b, b - matvec(x) - self.damping * x), matvec.calls
        else:
            residual, hvps = _relative(b, b - kfac.matvec(x, self.damping)), 0
        return x, SolveStats(self.name, 1, residual, True, False, hvps, time.perf_counter() - start, self.damping)


__all__ = ["ACTIVATIONS", "EIGENVALUES", "FISHERS", "Kfac", "KfacLayer", "KfacPreconditioner", "KfacSolver"]
