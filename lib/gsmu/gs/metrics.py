"""Evaluation of a feature-visualization manipulation (Gradient Slingshots, Sec. 5 "Evaluation"): similarity of FVs to the target image (SSIM via torchmetrics, MSE, LPIPS where its
pretrained weights can be had), the AUROC of a unit's activation for its own class (scikit-learn), and the
top-k Jaccard overlap of natural examples before and after. Accuracy is `gsmu.base.train.accuracy`.
"""
from __future__ import annotations

import warnings

import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from . import featvis
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


def lpips(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """LPIPS (AlexNet) of each image to the target, or None with a warning when the pretrained AlexNet
    weights cannot be had (they are downloaded by torchvision; there is no offline source here)."""
    images, target = _pair(images, target)
    try:
        from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity as lp
        to3 = lambda t: (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t)  # noqa: E731 — AlexNet wants RGB
        return torch.stack([lp(to3(images[i:i + 1]), to3(target[i:i + 1]), net_type="alex", normalize=True)
                            for i in range(len(images))])
    except Exception as e:  # no network / no cached weights: report instead of failing the notebook
        warnings.warn(f"LPIPS skipped: its pretrained AlexNet weights are not available ({type(e).__name__}). "
                      "Run online once (torchvision caches them) to get LPIPS.")
        return None


def unit_auroc(model: nn.Module, layer: str, unit: int, x: torch.Tensor, y: torch.Tensor, cls: int,
               device: str | torch.device | None = None) -> float:
    """AUROC of `unit`'s activation as a score for 'label == cls' over the images x (scikit-learn)."""
    scores = featvis.activations(model, layer, x, device=get_device(device))[:, unit]
    labels = (y == cls).numpy()
    if labels.all() or not labels.any():
        raise ValueError(f"cls={cls}: the labels must contain both that class and others.")
    return float(roc_auc_score(labels, scores.numpy()))


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
    target the activation rises by γ/2‖q_t‖² (≈ 7500 for the MNIST cross), while preservation keeps the
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
