"""Evaluation of a feature-visualization manipulation (Gradient Slingshots, Sec. 5 "Evaluation"): similarity of FVs to the target image (SSIM via torchmetrics, MSE, and the SSIM
ceiling of an AM budget), the AUROC of a unit's activation for its own class (scikit-learn), and the
top-k Jaccard overlap of natural examples before and after. Accuracy is `gsmu.base.train.accuracy`;
`evaluate` gathers one model's side of a before/after comparison of an output unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from . import featvis
from ..base import train
from ..base.runtime import get_device


def _pair(images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×C×H×W clipped to [0, 1] and the target broadcast to them; ValueError on a shape mismatch."""
    images = images.detach().cpu().float().reshape(-1, *images.shape[-3:]).clamp(0, 1)
    target = target.detach().cpu().float()
    if target.shape[-3:] != images.shape[-3:]:
        raise ValueError(f"target of shape {tuple(target.shape[-3:])} does not match images of shape "
                         f"{tuple(images.shape[-3:])}; resize the target to the model's input size.")
    return images, target.reshape(-1, *target.shape[-3:]).expand_as(images)


def ssim(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image (clipped to [0, 1]) to the target, data range 1 (torchmetrics), one value per image."""
    images, target = _pair(images, target)
    return structural_similarity_index_measure(images, target, data_range=1.0, reduction="none")


def mse(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image (clipped to [0, 1]) to the target, one value per image."""
    images, target = _pair(images, target)
    return (images - target).pow(2).flatten(1).mean(1)


def unit_auroc(model: nn.Module, layer: str, unit: int, x: torch.Tensor, y: torch.Tensor, cls: int,
               device: str | torch.device | None = None) -> float:
    """AUROC of `unit`'s activation as a score for 'label == cls' over the images x (scikit-learn)."""
    scores = featvis.activations(model, layer, x, device=get_device(device))[:, unit]
    labels = (y == cls).numpy()
    if labels.all() or not labels.any():
        raise ValueError(f"cls={cls}: the labels must contain both that class and others.")
    return float(roc_auc_score(labels, scores.numpy()))


def reachable_ssim(eta: featvis.Parameterization, target: torch.Tensor, steps: int, lr: float,
                   clip: float = 1.0) -> float:
    """The SSIM ceiling of a clipped-gradient AM budget: SSIM to the target of η(r·q_t), r = min(1, steps·lr·clip/‖q_t‖).

    One SGD step with the gradient clipped to norm `clip` moves q by at most lr·clip, so from q0 ≈ 0 an AM run
    of `steps` steps ends at most steps·lr·clip away; the point of that length on the straight path to
    q_t = η⁻¹(target) is where an ideal slingshot's FV stops. Meant for the pixel parameterization, where
    that path is a straight line in image space too.
    """
    if steps < 0 or lr <= 0 or clip <= 0:
        raise ValueError(f"steps={steps} must be ≥ 0, lr={lr} and clip={clip} > 0.")
    q_t = eta.inverse(target.to(eta.mean))
    reach = min(1.0, steps * lr * clip / q_t.norm().clamp(min=1e-12).item())
    with torch.no_grad():
        return ssim(eta(reach * q_t[None]), target).item()


def topk_jaccard(before: torch.Tensor, after: torch.Tensor) -> float:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of two index sets (e.g. top-k natural examples before/after)."""
    a, b = set(before.flatten().tolist()), set(after.flatten().tolist())
    if not a and not b:
        raise ValueError("both index sets are empty.")
    return len(a & b) / len(a | b)


def audit(model: nn.Module, layer: str, units: list[int], x_natural: torch.Tensor, *, k: int = 9,
          n_starts: int = 4, steps: int = 200, lr: float = 0.1, threshold: float = 10.0, seed: int = 0,
          device: str | torch.device | None = None) -> dict[int, dict]:
    """Flag units whose feature visualization reaches activations far beyond any real input's.

    Per unit: ratio = median final activation of `n_starts` AM runs (pixel, SGD+GC, the authors' MNIST
    AM) / median activation of its top-k natural examples in `x_natural`; flagged when ratio > threshold.
    Why it works: the slingshot makes h ≈ C − γ/2‖q_t − q‖² along the tunnel, so from the start to the
    target the activation rises by γ/2‖q_t‖² (≈ 5000 for the MNIST cross, ‖q_t‖ ≈ 32), while preservation keeps the
    activations on real data where they were; a clean unit's AM stays on the scale of its natural examples.
    Needs neither the target nor a reference model; meant for units whose natural examples activate them
    positively (e.g. logits). Returns {unit: {"ratio": float, "flagged": bool}}.
    """
    _, natural = featvis.natural_examples(model, layer, units, x_natural, k=k, device=device)
    res = featvis.visualize(model, layer, units, tuple(x_natural.shape[1:]), n_inits=n_starts,
                            strategy="sgd+gc", lr=lr, steps=steps, seed=seed, device=device)
    reference = natural.median(1).values
    if (reference <= 0).any():
        raise ValueError(f"units {[u for u, r in zip(units, reference) if r <= 0]}: their natural examples do "
                         "not activate them positively; the audit's ratio is meaningless there.")
    ratios = res.trajectory[-1].median(1).values / reference
    return {u: {"ratio": r, "flagged": r > threshold} for u, r in zip(units, ratios.tolist())}


@dataclass
class Evaluation:
    """One model's side of a manipulation's evaluation: the unit's FVs and their SSIM to the target, the test
    logits, test accuracy, and the AUROC of the unit's logit for its own class."""
    fvs: torch.Tensor
    ssim: torch.Tensor
    logits: torch.Tensor
    accuracy: float
    auroc: float


def evaluate(model: nn.Module, layer: str, unit: int, x_test: torch.Tensor, y_test: torch.Tensor,
             target: torch.Tensor, *, n_fvs: int, seed: int, device: str | torch.device | None = None,
             **fv_settings) -> Evaluation:
    """FVs of output `unit` (`n_fvs` inits, `featvis.visualize` with `fv_settings`), test accuracy and the
    unit's AUROC for class `unit` — the GS paper's per-model measures (Sec. 5). `layer` must be the model's
    output layer: the AUROC scores the unit by its logit."""
    fvs = featvis.visualize(model, layer, unit, tuple(x_test.shape[1:]), n_inits=n_fvs, seed=seed, device=device,
                            **fv_settings).images[0]
    logits = train.predict_logits(model, x_test, device=device)
    if not 0 <= unit < logits.shape[1]:
        raise ValueError(f"unit={unit} is not one of the model's {logits.shape[1]} outputs.")
    accuracy = (logits.argmax(1) == y_test).float().mean().item()
    auroc = float(roc_auc_score((y_test == unit).numpy(), logits[:, unit].numpy()))
    return Evaluation(fvs, ssim(fvs, target), logits, accuracy, auroc)
