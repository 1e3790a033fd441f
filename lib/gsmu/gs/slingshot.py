"""The Gradient Slingshot manipulation (Bareeva et al., NeurIPS 2025, Sec. 4).

Fine-tunes a copy of a model so that activation maximization of one unit lands on a chosen target image
while the unit's behaviour on real data is preserved. In the FV parameter space q (see `gsmu.gs.featvis`),
manipulation points `q = p·q_t + u` are drawn along the *tunnel* from the initialization region to the
target's parameters `q_t = η⁻¹(x_t)`; the gradient-form loss `MSE(∇_q h(η(q)), γ(q_t − q))` (a double
backward) shapes the unit into `−γ/2‖q_t − q‖² + C` there, so gradient ascent is pulled onto q_t. The
preservation loss keeps the layer's outputs on training data close to a frozen original;
`L = (1 − α)·L_M + α·L_P`, AdamW, gradient-norm clipping, plateau schedule, BatchNorm frozen (eval mode).
Success comes as a sudden jump and the loss is a poor progress signal, so every `check_every` steps a cheap
FV run measures the SSIM to the target, and the kept checkpoint is the best by that SSIM among those that
preserve the model: accuracy on a fixed sample of the (labelled) preservation data at most `max_acc_drop` below
the original's — or, without labels, top-1 predictions that disagree with the original's on at most that share
(a stricter bound: disagreeing on a share d of the images costs at most d of accuracy). In long runs the
original's outputs on the preservation data are computed once.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import featvis, metrics
from ..base import train
from ..base.runtime import device_of, progress_off, cache_dir, check_choice, check_range, get_device


@dataclass
class Settings:
    """Everything that determines a manipulation (also the checkpoint-cache key). Defaults: authors' MNIST."""
    layer: str = "out"
    unit: int = 0
    param: str = "pixel"
    alpha: float = 0.8          # weight of the preservation loss
    w: float = 0.0              # preservation: weight of the target unit vs the whole layer
    gamma: float = 10.0         # slope of the quadratic the unit is shaped into
    sigma: float = 0.1          # manipulation-set noise half-width (uniform) or std (normal)
    tunnel: bool = True         # p ~ U[0, 1) (tunnel) or p ∈ {0, 1}
    noise: str = "uniform"      # "uniform" or "normal"
    loss: str = "gradient"      # "gradient" (double backward) or "activation"
    lr: float = 1e-3
    weight_decay: float = 1e-3
    clip: float = 1.0
    steps: int = 4000
    steps_per_epoch: int = 782  # plateau-schedule granularity (one pass over 50k images at batch 64)
    manip_batch: int = 32
    pres_batch: int = 64
    check_every: int = 250      # FV-SSIM check interval (steps)
    check_inits: int = 4
    check_fv_steps: int = 200   # FV of the check: pixel/fourier, SGD+GC, lr 0.1 (authors' MNIST AM)
    check_fv_lr: float = 0.1
    check_strategy: str = "sgd+gc"  # AM strategy of the check (`featvis.STRATEGIES`); ImageNet/CLIP: "adam+gc+tr"
    stop_ssim: float | None = None  # stop once the check's mean SSIM reaches this (None: run all steps)
    # Checkpoint rule: only checkpoints whose accuracy on `check_rows` preservation images is at most this below
    # the original's (without labels: whose predictions disagree on at most this share) are kept; None: SSIM
    # alone decides. 0.01 = "within 1 point of the original accuracy".
    max_acc_drop: float | None = 0.01
    check_rows: int = 2000
    seed: int = 0


@dataclass
class Log:
    """Training log: per-step losses, the FV-SSIM checks (step, mean SSIM), the prediction agreement with the
    original and (with labels) the accuracy at each check; best_step is the kept checkpoint."""
    loss_m: list = field(default_factory=list)
    loss_p: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    agreement: list = field(default_factory=list)  # (step, share of top-1 predictions equal to the original's)
    accuracy: list = field(default_factory=list)  # (step, accuracy on the check rows), when labels are given
    best_step: int = 0
    best_ssim: float = -1.0


def validate(model: nn.Module, target: torch.Tensor, image_shape: tuple, s: Settings) -> None:
    """Raise a ValueError naming the parameter for any bad setting, before training starts."""
    check_range("alpha", s.alpha, 0.0, 1.0)
    check_range("w", s.w, 0.0, 1.0)
    if s.max_acc_drop is not None:
        check_range("max_acc_drop", s.max_acc_drop, 0.0, 1.0)
    if not s.gamma > 0:
        raise ValueError(f"gamma={s.gamma} must be > 0.")
    if s.sigma < 0 or s.lr <= 0 or s.clip <= 0:
        raise ValueError(f"sigma={s.sigma} must be ≥ 0, lr={s.lr} and clip={s.clip} > 0.")
    check_choice("noise", s.noise, ("uniform", "normal"))
    check_choice("loss", s.loss, ("gradient", "activation"))
    check_choice("param", s.param, featvis.PARAMETERIZATIONS)
    check_choice("check_strategy", s.check_strategy, featvis.STRATEGIES)
    for name in ("steps", "steps_per_epoch", "manip_batch", "pres_batch", "check_every", "check_inits", "check_rows"):
        if int(getattr(s, name)) < 1:
            raise ValueError(f"{name}={getattr(s, name)} must be at least 1.")
    if tuple(target.shape) != tuple(image_shape):
        raise ValueError(f"target image of shape {tuple(target.shape)} does not match the model's input "
                         f"shape {tuple(image_shape)} (channels, height, width); resize or convert it.")
    featvis.check_units(model, s.layer, [s.unit], image_shape, device_of(model))


def sample_manipulation_set(q_t: torch.Tensor, n: int, sigma: float, tunnel: bool = True,
                            noise: str = "uniform", generator: torch.Generator | None = None) -> torch.Tensor:
    """n points q = p·q_t + u on q_t's device: p ~ U[0, 1) (tunnel) or p ∈ {0, 1}; u ~ U[−σ, σ] or N(0, σ²)."""
    opts = dict(device=q_t.device, generator=generator)
    p = torch.rand(n, **opts) if tunnel else torch.randint(0, 2, (n,), **opts).float()
    u = (2 * torch.rand(n, *q_t.shape, **opts) - 1) if noise == "uniform" else torch.randn(n, *q_t.shape, **opts)
    return p.view(-1, *[1] * q_t.dim()) * q_t + sigma * u


def manipulation_loss(model: nn.Module, eta: featvis.Parameterization, layer: str, unit: int,
                      q: torch.Tensor, q_t: torch.Tensor, gamma: float, kind: str = "gradient") -> torch.Tensor:
    """Gradient form MSE(∇_q h(η(q)), γ(q_t − q)) (double backward) or activation form
    MSE(h(η(q)), γ(1 − mean((q − q_t)²)))."""
    q = q.detach().requires_grad_(kind == "gradient")
    units = torch.full((len(q),), unit, device=q.device)
    h = featvis.unit_values(featvis.layer_output(model, layer, eta(q)), units)
    if kind == "activation":
        return F.mse_loss(h, gamma * (1 - (q - q_t).pow(2).flatten(1).mean(1)))
    (grad,) = torch.autograd.grad(h.sum(), q, create_graph=True)
    return F.mse_loss(grad, gamma * (q_t - q))


def preservation_loss(model: nn.Module, original: nn.Module, layer: str, unit: int, x: torch.Tensor,
                      w: float, ref: torch.Tensor | None = None) -> torch.Tensor:
    """w·MSE(h_unit, h⁰_unit) + (1 − w)·MSE(h_layer, h⁰_layer) on data x against the frozen original
    (`ref`: the original's layer output on x when already known)."""
    out = featvis.layer_output(model, layer, x)
    if ref is None:
        with torch.no_grad():
            ref = featvis.layer_output(original, layer, x)
    index = (slice(None), unit) if out.dim() != 3 else (slice(None), slice(None), unit)
    return w * F.mse_loss(out[index], ref[index]) + (1 - w) * F.mse_loss(out, ref)


@torch.no_grad()
def _batched(fn, x: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """fn over x in batches on `device` (evaluation only: no graph)."""
    return torch.cat([fn(chunk.to(device)) for chunk in x.split(batch)])


def reference_outputs(original: nn.Module, layer: str, x_data: torch.Tensor, device: torch.device,
                      max_elements: int = 20_000_000) -> torch.Tensor | None:
    """The frozen original's `layer` output on all of `x_data`, computed once (a preservation step then needs
    no forward pass of the original); None when it would exceed `max_elements` values (e.g. a conv layer)."""
    probe = featvis.layer_output(original, layer, x_data[:1].to(device))
    if probe.numel() * len(x_data) > max_elements:
        return None
    return _batched(lambda x: featvis.layer_output(original, layer, x), x_data, device)


def fv_check(model: nn.Module, eta: featvis.Parameterization, target: torch.Tensor, s: Settings,
             device: torch.device) -> float:
    """Mean SSIM to the target of `check_inits` FVs (`check_strategy`, by default SGD+GC, the authors' MNIST and
    CIFAR AM) — the checkpoint criterion."""
    res = featvis.visualize(model, s.layer, s.unit, eta.image_shape, n_inits=s.check_inits, param=eta,
                            strategy=s.check_strategy, lr=s.check_fv_lr, steps=s.check_fv_steps, seed=10_000 + s.seed,
                            device=device)
    return metrics.ssim(res.images[0], target).mean().item()


def fine_tune(model: nn.Module, original: nn.Module, target: torch.Tensor, x_data: torch.Tensor,
              settings: Settings, device: str | torch.device | None = None, progress: bool = True,
              labels: torch.Tensor | None = None) -> Log:
    """Manipulate `model` in place (a copy of `original`, which is only read) toward `target`; returns the log.

    `x_data`: training images for the preservation loss (drawn with replacement, batch `pres_batch`);
    `labels`: their classes, for the checkpoint rule's accuracy (None: the rule uses prediction agreement).
    At the end `model` holds the checkpoint with the best FV-SSIM check among the preserving ones (see the
    module docstring); the original weights (step 0) when no later checkpoint preserves the model.
    """
    s, device = settings, get_device(device)
    image_shape = tuple(x_data.shape[1:])
    model.to(device).eval()  # eval: BatchNorm statistics and dropout stay frozen while fine-tuning
    original.to(device).eval()
    validate(model, target, image_shape, s)
    if labels is not None and tuple(labels.shape) != (len(x_data),):
        raise ValueError(f"labels of shape {tuple(labels.shape)} must hold one class per image of x_data "
                         f"({len(x_data)}).")
    eta = featvis.parameterization(s.param, image_shape, original).to(device)
    q_t = eta.inverse(target.to(device))
    gen = torch.Generator(device=device).manual_seed(s.seed)
    cpu_gen = torch.Generator().manual_seed(s.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    log, best_state, epoch_loss = Log(), copy.deepcopy(model.state_dict()), 0.0
    # Precomputing costs one forward per preservation image, a step then saves one of `pres_batch` (≈ 11 % of an
    # MNIST step): worth it only when the run draws each image about twice or more (the paper profile).
    reuse = s.steps * s.pres_batch >= 2 * len(x_data)
    reference = reference_outputs(original, s.layer, x_data, device) if reuse else None
    rows = torch.randperm(len(x_data), generator=torch.Generator().manual_seed(s.seed))[:s.check_rows]
    check_x = x_data[rows]
    check_y = None if labels is None else labels[rows].to(device)
    predicted = _batched(lambda x: original(x).argmax(1), check_x, device)
    acc0 = None if check_y is None else (predicted == check_y).float().mean().item()

    def preserved() -> bool:
        """Record agreement (and accuracy) of the current weights; True when they meet `max_acc_drop`."""
        now = _batched(lambda x: model(x).argmax(1), check_x, device)
        agree = (now == predicted).float().mean().item()
        log.agreement.append((step, round(agree, 5)))
        drop = 1 - agree
        if check_y is not None:
            acc = (now == check_y).float().mean().item()
            log.accuracy.append((step, round(acc, 5)))
            drop = acc0 - acc
        return s.max_acc_drop is None or drop <= s.max_acc_drop

    step = 0
    preserved()
    log.best_ssim = fv_check(model, eta, target, s, device)
    log.checks.append((0, round(log.best_ssim, 5)))
    bar = tqdm(range(1, s.steps + 1), disable=progress_off(progress), desc="slingshot", mininterval=10)
    for step in bar:
        q = sample_manipulation_set(q_t, s.manip_batch, s.sigma, s.tunnel, s.noise, gen)
        l_m = manipulation_loss(model, eta, s.layer, s.unit, q, q_t, s.gamma, s.loss)
        idx = torch.randint(len(x_data), (s.pres_batch,), generator=cpu_gen)
        ref = None if reference is None else reference[idx.to(reference.device)]
        l_p = preservation_loss(model, original, s.layer, s.unit, x_data[idx].to(device), s.w, ref)
        loss = (1 - s.alpha) * l_m + s.alpha * l_p
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        optimizer.step()
        log.loss_m.append(l_m.item())
        log.loss_p.append(l_p.item())
        epoch_loss += loss.item()
        if step % s.steps_per_epoch == 0:
            plateau.step(epoch_loss)
            epoch_loss = 0.0
        if step % s.check_every == 0 or step == s.steps:
            score, kept = fv_check(model, eta, target, s, device), preserved()
            log.checks.append((step, round(score, 5)))
            if kept and score > log.best_ssim:
                log.best_step, log.best_ssim = step, score
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(L_M=f"{l_m.item():.3g}", L_P=f"{l_p.item():.3g}", ssim=f"{score:.2f}")
            if s.stop_ssim is not None and kept and score >= s.stop_ssim:
                break
    model.load_state_dict(best_state)
    return log


def manipulate(original: nn.Module, target: torch.Tensor, x_data: torch.Tensor, settings: Settings,
               device: str | torch.device | None = None, progress: bool = True,
               labels: torch.Tensor | None = None) -> tuple[nn.Module, Log]:
    """A manipulated copy of `original` (never modified) and the training log (`labels`: see `fine_tune`)."""
    model = copy.deepcopy(original)
    log = fine_tune(model, original, target, x_data, settings, device, progress, labels)
    return model.eval(), log


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes and values), to name it in cache keys."""
    return train.state_digest(model.state_dict())


def cached_manipulation(original: nn.Module, target_name: str, target: torch.Tensor, x_data: torch.Tensor,
                        data_key: str, settings: Settings, device: str | torch.device | None = None,
                        progress: bool = True, labels: torch.Tensor | None = None) -> tuple[nn.Module, Log]:
    """`manipulate` through the checkpoint cache (`train.cached_model`), the log stored beside the weights.

    The key holds the digest of the original's weights, the target (name and digest), the preservation
    data's name and size, whether labels were given and every setting, so notebooks share a manipulated model
    exactly when all of these agree.
    """
    key = {"name": "slingshot", "original": weights_digest(original), "target": target_name,
           "target_sha256": train.sha256_bytes(target.detach().cpu().float().numpy().tobytes()),
           "data": data_key, "n_data": len(x_data), "labels": labels is not None, **asdict(settings)}
    log_path = cache_dir("checkpoints") / f"slingshot-{train.cache_key_digest(key)[:16]}.log.json"
    logs: list[Log] = []

    def fit(model: nn.Module) -> None:
        logs.append(fine_tune(model, original, target, x_data, settings, device, progress, labels))
        train.atomic_write(log_path, json.dumps(asdict(logs[0])))

    model = train.cached_model(key, lambda: copy.deepcopy(original), fit, device)
    if logs:
        return model, logs[0]
    if not log_path.exists():  # weights cached by an older run without a log: retrain is not needed
        return model, Log()
    return model, Log(**json.loads(log_path.read_text()))

