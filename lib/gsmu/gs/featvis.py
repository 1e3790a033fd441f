"""Feature visualization by activation maximization (AM), batched: the explanation the Gradient Slingshots
paper attacks (Bareeva et al., "Manipulating Feature Visualizations with Gradient Slingshots", Sec. 2/3).

A unit's activation `h(x)` is read with a forward hook on a layer addressed by its `named_modules()` path
(an output logit, a linear unit, or a conv channel's spatial mean) or computed by any callable on that
layer's output. The input is parameterized as `x = η(q)` — `pixel` (q is the normalized image) or
`fourier` (Lucid-style scaled spectrum, colour decorrelation, sigmoid), both exactly invertible — and `q`
is optimized by gradient ascent from `q0 ~ N(0, σ²)` with a `Strategy` — an optimizer factory, a list of
random transforms and an optional per-image gradient clip, composed as Lucent composes them; the paper's
strategies (SGD, SGD+GC, TR, Adam, Adam+GC+TR) are presets by name (`STRATEGIES`). Many units × many initializations run as one batch; every sample has its own
random stream, so a result does not depend on which other units share the batch. `natural_examples`
returns the top-k most activating dataset images (the defense's reference).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..base.runtime import progress_off, check_choice, get_device, torch_threads

PARAMETERIZATIONS = ("pixel", "fourier")
# Lucid/Lucent colour-correlation square root (ImageNet statistics), normalized by its largest column norm.
_COLOR_CORRELATION = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
# sigmoid never reaches 0 or 1, so targets are clamped to [eps, 1 - eps] before the inverse (logit)
SIGMOID_EPS = 1e-4

Unit = int | Sequence[int] | Callable[[torch.Tensor], torch.Tensor]


# --- layers, hooks and units ------------------------------------------------------------------------------

def get_layer(model: nn.Module, layer: str) -> nn.Module:
    """The sub-module at `layer` (a `named_modules()` path such as 'fc3' or 'features.3'); ValueError otherwise."""
    modules = dict(model.named_modules())
    if layer not in modules:
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.4)
        hint = f" Close names: {close}." if close else ""
        raise ValueError(f"layer={layer!r} is not a module of {type(model).__name__}.{hint} "
                         f"Use one of model.named_modules() (e.g. {[n for n in modules if n][:8]}).")
    return modules[layer]


class LayerTap:
    """A forward hook on `layer` kept for a whole optimization (one registration instead of one per step):
    `tap(x)` runs `model(x)` and returns the layer's output; use as a context manager, which removes the hook."""

    def __init__(self, model: nn.Module, layer: str):
        self.model, self._out = model, None
        self._handle = get_layer(model, layer).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: tuple, out) -> None:
        self._out = out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._out = None
        self.model(x)
        out, self._out = self._out, None  # hold no reference to the graph between steps
        if out is None:
            raise RuntimeError("the hooked layer did not run in model(x).")
        return out[0] if isinstance(out, tuple) else out  # e.g. nn.LSTM returns (output, state)

    def __enter__(self) -> "LayerTap":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Run `model(x)` and return the output of `layer`; the hook is removed whatever happens."""
    with LayerTap(model, layer) as tap:
        return tap(x)


def n_units(output: torch.Tensor) -> int:
    """Number of units of a layer output: features of N×U, channels of N×C×H×W, last dim of N×T×U."""
    return output.shape[-1] if output.dim() in (2, 3) else output.shape[1]


def unit_values(output: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Activation of unit `units[i]` for sample i: a feature, or a conv channel's spatial mean (N,)."""
    rows = torch.arange(output.shape[0], device=output.device)
    if output.dim() == 2:
        return output[rows, units]
    if output.dim() == 3:  # sequence models: mean over time
        return output[rows, :, units].mean(1)
    return output[rows, units].flatten(1).mean(1)


def all_unit_values(output: torch.Tensor) -> torch.Tensor:
    """Every unit's activation per sample, N×U (conv channels averaged over space, sequences over time)."""
    if output.dim() == 2:
        return output
    if output.dim() == 3:
        return output.mean(1)
    return output.flatten(2).mean(2)


def check_units(model: nn.Module, layer: str, units: Sequence[int], image_shape: Sequence[int],
                device: torch.device | None = None) -> int:
    """Validate `layer`, `image_shape` and `units` with one cheap forward pass; return the layer's unit count."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape={tuple(image_shape)} must be (channels, height, width).")
    probe = torch.zeros(1, *image_shape, device=device)
    get_layer(model, layer)
    try:
        with torch.no_grad():
            out = layer_output(model, layer, probe)
    except RuntimeError as e:
        raise ValueError(f"image_shape={tuple(image_shape)} does not fit {type(model).__name__}: {e}. "
                         "Pass the shape of one input image (C, H, W) the model accepts.") from e
    size = n_units(out)
    bad = [u for u in units if not 0 <= int(u) < size]
    if bad:
        raise ValueError(f"unit(s) {bad} out of range for layer {layer!r} with {size} units; use 0..{size - 1}.")
    return size


def activations(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int = 1024,
                device: str | torch.device | None = None) -> torch.Tensor:
    """All units' activations of `layer` for every image of `x`, N×U on the CPU (batched, no grad)."""
    device = get_device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [all_unit_values(layer_output(model, layer, x[i:i + batch_size].to(device))).cpu()
                     for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def natural_examples(model: nn.Module, layer: str, units: Sequence[int], x: torch.Tensor, k: int = 9,
                     batch_size: int = 1024, device: str | torch.device | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k most activating images of `x` per unit: (indices U×k, activations U×k), highest first."""
    units = list(units)
    check_units(model, layer, units, x.shape[1:], get_device(device))
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k} must be between 1 and the number of images ({len(x)}).")
    acts = activations(model, layer, x, batch_size, device)[:, units]
    values, indices = acts.topk(k, dim=0)
    return indices.T.contiguous(), values.T.contiguous()


# --- parameterizations -------------------------------------------------------------------------------------

def fourier_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """Spectrum scaling 1 / max(|f|, 1/max(H, W))^decay on the rfft2 grid, H×(W//2+1)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fy ** 2 + fx ** 2)
    return (1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay).float()


def color_matrix() -> torch.Tensor:
    """The colour-decorrelation matrix, normalized by its largest column norm (3×3)."""
    m = torch.tensor(_COLOR_CORRELATION, dtype=torch.float64)
    return (m / m.norm(dim=0).max()).float()


class Parameterization(nn.Module):
    """x = η(q) for images of `image_shape` (C, H, W); `forward` maps q → image, `inverse` image → q."""

    def __init__(self, kind: str, image_shape: Sequence[int], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, decay: float = 1.0):
        super().__init__()
        self.kind = check_choice("param", kind, PARAMETERIZATIONS)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape={tuple(image_shape)} must be (channels, height, width).")
        c, h, w = (int(s) for s in image_shape)
        self.image_shape = (c, h, w)
        self.register_buffer("mean", torch.zeros(c, 1, 1) if mean is None else mean.detach().reshape(-1, 1, 1).float())
        self.register_buffer("std", torch.ones(c, 1, 1) if std is None else std.detach().reshape(-1, 1, 1).float())
        self.register_buffer("scale", fourier_scale(h, w, decay))
        self.register_buffer("color", color_matrix() if c == 3 else torch.eye(c))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample's parameters q."""
        c, h, w = self.image_shape
        return (c, h, w) if self.kind == "pixel" else (c, h, w // 2 + 1, 2)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixel":
            return self.mean + self.std * q
        _, h, w = self.image_shape
        spectrum = torch.view_as_complex(q.contiguous()) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
        return torch.sigmoid(torch.einsum("cd,ndhw->nchw", self.color, decorrelated))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Parameters q with η(q) = x (for fourier: x clamped to [eps, 1 − eps], which sigmoid can reach)."""
        if x.shape[-3:] != self.image_shape:
            raise ValueError(f"image of shape {tuple(x.shape[-3:])} does not match image_shape={self.image_shape}.")
        batched = x.dim() == 4
        x = (x if batched else x.unsqueeze(0)).to(self.mean)
        if self.kind == "pixel":
            q = (x - self.mean) / self.std
        else:
            logits = torch.logit(x.clamp(SIGMOID_EPS, 1 - SIGMOID_EPS))
            decorrelated = torch.einsum("cd,ndhw->nchw", torch.linalg.inv(self.color), logits)
            q = torch.view_as_real(torch.fft.rfft2(decorrelated, norm="ortho") / self.scale)
        return q if batched else q[0]


def parameterization(kind: str, image_shape: Sequence[int], model: nn.Module | None = None,
                     decay: float = 1.0) -> Parameterization:
    """A parameterization for `model`: pixel uses the model's own input normalization (`model.normalize`)."""
    norm = getattr(model, "normalize", None)
    mean, std = (getattr(norm, "mean", None), getattr(norm, "std", None)) if norm is not None else (None, None)
    return Parameterization(kind, image_shape, mean, std, decay)


# --- random transforms ("TR") ------------------------------------------------------------------------------

def random_transform(x: torch.Tensor, params: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad, rotate/scale/translate each image by its own `params` row (angle°, scale, dx, dy px), crop back.

    torchvision's affine applies one matrix to a whole batch; per-sample matrices keep every sample
    independent, so the same operation is written with torch's affine_grid/grid_sample.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    angle = params[:, 0] * math.pi / 180
    cos, sin = torch.cos(angle) / params[:, 1], torch.sin(angle) / params[:, 1]
    hp, wp = h + 2 * pad, w + 2 * pad
    theta = torch.stack([torch.stack([cos, -sin, 2 * params[:, 2] / wp], 1),
                         torch.stack([sin, cos, 2 * params[:, 3] / hp], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(padded.shape), align_corners=False)
    moved = F.grid_sample(padded, grid, padding_mode="border", align_corners=False)
    return moved[:, :, pad:pad + h, pad:pad + w]


def draw_transform_params(generators: list[torch.Generator], pad: int, max_angle: float = 20.0,
                          scale: tuple[float, float] = (0.75, 1.025)) -> torch.Tensor:
    """One row (angle, scale, dx, dy) per generator: U(±max_angle), U(scale), U(±pad) px translation."""
    u = torch.stack([torch.rand(4, generator=g) for g in generators])
    return torch.stack([(2 * u[:, 0] - 1) * max_angle, scale[0] + (scale[1] - scale[0]) * u[:, 1],
                        (2 * u[:, 2] - 1) * pad, (2 * u[:, 3] - 1) * pad], 1)


class Transform(Protocol):
    """A random transform of a batch of images; sample i draws from `generators[i % len(generators)]`."""
    def __call__(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor: ...


@dataclass(frozen=True)
class RandomAffine:
    """The paper's "TR": pad, random rotation (±max_angle°), scale and shift (±pad px), crop back; one draw per sample."""
    pad: int = 2
    max_angle: float = 20.0
    scale: tuple[float, float] = (0.75, 1.025)

    def __call__(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        params = draw_transform_params(generators, self.pad, self.max_angle, self.scale)
        params = params.repeat(len(x) // len(generators), 1)  # units × inits: init i shares its stream
        return random_transform(x, params.to(x.device), self.pad)


Optimizer = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]


def sgd(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


@dataclass(frozen=True)
class Strategy:
    """How AM optimizes q: `optimizer(params, lr)`, `transforms` applied in order to η(q) before the model,
    and `clip`, the per-image gradient-norm bound (None: no clipping)."""
    optimizer: Optimizer = sgd
    transforms: tuple[Transform, ...] = ()
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip={self.clip} must be > 0 (or None for no clipping).")


def _presets(clip: float, pad: int) -> dict[str, Strategy]:
    tr = (RandomAffine(pad=pad),)
    return {"sgd": Strategy(sgd), "sgd+gc": Strategy(sgd, clip=clip), "tr": Strategy(sgd, tr),
            "adam": Strategy(adam), "adam+gc+tr": Strategy(adam, tr, clip=clip)}


STRATEGIES = tuple(_presets(1.0, 2))  # the paper's strategies by name (GS paper, Sec. 5 / appendix)


def strategy_preset(name: str, clip: float = 1.0, pad: int = 2) -> Strategy:
    """The paper's strategy `name` ('sgd', 'sgd+gc', 'tr', 'adam', 'adam+gc+tr') with clip bound `clip` and TR padding `pad`."""
    return _presets(clip, pad)[check_choice("strategy", name, STRATEGIES)]


# --- optimization ------------------------------------------------------------------------------------------

@dataclass
class FVResult:
    """Feature visualizations of `units` × `n_inits`: images U×I×C×H×W (η(q), not clamped), parameters
    q U×I×..., activation trajectory (steps+1)×U×I (entry t: before step t+1; last: final, untransformed);
    `snapshots`: the images after each requested earlier step count, {step: U×I×C×H×W}."""
    images: torch.Tensor
    q: torch.Tensor
    trajectory: torch.Tensor
    units: list
    snapshots: dict = field(default_factory=dict)


def clip_per_sample(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each sample's gradient to norm ≤ max_norm (clipping over the batch would shrink every step)."""
    norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
    factor = (max_norm / norms).clamp(max=1.0)
    return grad * factor.view(-1, *[1] * (grad.dim() - 1))


def init_params(shape: Sequence[int], n_inits: int, sigma: float, seed: int
                ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """q0 ~ N(0, σ²) for inits 0..n−1, init i drawn from its own generator seeded `seed + i`
    (so one init alone, with seed + i, reproduces it); the generators go on to draw its transforms."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n_inits)]
    q0 = torch.stack([sigma * torch.randn(*shape, generator=g) for g in generators])
    return q0, generators


def visualize(model: nn.Module, layer: str, units: Unit, image_shape: Sequence[int], *,
              n_inits: int = 1, param: str | Parameterization = "pixel", strategy: str | Strategy = "sgd+gc",
              lr: float = 0.1, steps: int = 200, sigma: float = 0.01, clip: float = 1.0, pad: int = 2,
              seed: int = 0, device: str | torch.device | None = None, progress: bool = False,
              snapshots: Sequence[int] = ()) -> FVResult:
    """Maximize `units` of `layer` from `n_inits` random starts each, all in one batch.

    `units`: an int, a list of ints, or a callable mapping the layer output (N×...) to one value per sample.
    `strategy`: a `Strategy`, or a preset name: 'sgd', 'sgd+gc' (per-image gradient clip to `clip`), 'tr'
    (SGD on randomly padded (`pad`)/rotated/scaled/shifted copies), 'adam', 'adam+gc+tr'; `clip` and `pad`
    only configure presets. The model is used in eval mode (BatchNorm
    and dropout fixed, so samples stay independent) and restored afterwards; its weights are not changed.
    `snapshots`: step counts (1..steps) whose images to keep as well — the same images a run of that many
    steps would end with (same seed), so one long run serves several AM budgets.
    """
    device = get_device(device)
    if not isinstance(strategy, Strategy):
        strategy = strategy_preset(strategy, clip, pad)
    for name, value in (("n_inits", n_inits), ("steps", steps)):
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be at least 1.")
    if lr <= 0 or sigma < 0 or clip <= 0:
        raise ValueError(f"lr={lr}, clip={clip} must be > 0 and sigma={sigma} ≥ 0.")
    if any(not 1 <= int(k) <= steps for k in snapshots):
        raise ValueError(f"snapshots={list(snapshots)} must be step counts between 1 and steps={steps}.")
    eta = param if isinstance(param, Parameterization) else parameterization(param, image_shape, model)
    if tuple(eta.image_shape) != tuple(image_shape):
        raise ValueError(f"param.image_shape={eta.image_shape} differs from image_shape={tuple(image_shape)}.")
    eta = eta.to(device)
    if callable(units):
        objective, unit_list = units, [units]
        check_units(model, layer, [], image_shape, device)
    else:
        unit_list = [int(units)] if isinstance(units, int) else [int(u) for u in units]
        check_units(model, layer, unit_list, image_shape, device)
        per_sample = torch.tensor(unit_list, device=device).repeat_interleave(n_inits)
        objective = lambda out: unit_values(out, per_sample)  # noqa: E731 — binds per_sample

    q0, generators = init_params(eta.shape, n_inits, sigma, seed)
    q = q0.repeat(len(unit_list), *[1] * (q0.dim() - 1)).to(device).requires_grad_(True)
    optimizer = strategy.optimizer([q], lr)
    trajectory, kept = [], {}
    was_training = model.training
    model.eval()
    try:  # the library's CPU thread count (runtime.cpu_threads): torch's one-per-core default is slower when shared
        with torch_threads(), LayerTap(model, layer) as tap:
            for step in tqdm(range(steps), disable=progress_off(progress), desc="FV", leave=False):
                x = eta(q)
                if step in snapshots:  # the image after `step` steps, before this step's transforms
                    kept[step] = x.detach().cpu()
                for transform in strategy.transforms:
                    x = transform(x, generators)
                value = objective(tap(x))
                trajectory.append(value.detach())
                (grad,) = torch.autograd.grad(-value.sum(), q)
                q.grad = grad if strategy.clip is None else clip_per_sample(grad, strategy.clip)
                optimizer.step()
            with torch.no_grad():
                images = eta(q)
                trajectory.append(objective(tap(images)))
    finally:
        model.train(was_training)
    shape = (len(unit_list), n_inits)
    images = images.detach().cpu()
    kept[steps] = images
    return FVResult(images=images.reshape(*shape, *images.shape[1:]),
                    q=q.detach().cpu().reshape(*shape, *q.shape[1:]),
                    trajectory=torch.stack(trajectory).cpu().reshape(-1, *shape),
                    units=unit_list,
                    snapshots={int(k): kept[int(k)].reshape(*shape, *images.shape[1:]) for k in snapshots})
