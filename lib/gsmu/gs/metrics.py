"""Evaluation of a feature-visualization manipulation (Gradient Slingshots, Sec. 5 "Evaluation"): similarity of
FVs to the target image (SSIM via torchmetrics, MSE, and the SSIM ceiling of an AM budget), the AUROC of a unit's
activation for its own class (scikit-learn), the top-k Jaccard overlap of natural examples before and after, and
where FVs lie relative to the manipulation's tunnel. Accuracy is `gsmu.base.train.accuracy`; `compare` gathers
all of them for a model before and after a manipulation.
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


def tunnel_coordinates(eta: featvis.Parameterization, target: torch.Tensor,
                       images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where images lie relative to the slingshot's tunnel axis, the straight line from q = 0 to q_t = η⁻¹(target):
    per image x = η(q), the distance travelled along the axis (‖q_t‖ at the target) and the distance from it.

    The manipulation trains the unit's gradient on points within σ of that axis only (Sec. 4), so an FV whose
    distance from the axis grows past that tube follows a gradient field the manipulation never shaped. Meant for
    the pixel parameterization, where η⁻¹ is exact.
    """
    q_t = eta.inverse(target.to(eta.mean)).flatten()
    axis = q_t / q_t.norm().clamp(min=1e-12)
    q = eta.inverse(images.detach().to(eta.mean).reshape(-1, *target.shape[-3:])).flatten(1)
    along = q @ axis
    return along, (q - along[:, None] * axis).norm(dim=1)


def topk_jaccard(before: torch.Tensor, after: torch.Tensor) -> float:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of two index sets (e.g. top-k natural examples before/after)."""
    a, b = set(before.flatten().tolist()), set(after.flatten().tolist())
    if not a and not b:
        raise ValueError("both index sets are empty.")
    return len(a & b) / len(a | b)


def audit(model: nn.Module, layer: str, units: list[int], x_natural: torch.Tensor, *, k: int = 9,
          n_starts: int = 4, steps: int = 200, lr: float = 0.1, threshold: float = 10.0, seed: int = 0,
          param: str = "pixel", center: bool = False,
          device: str | torch.device | None = None) -> dict[int, dict]:
    """Flag units whose feature visualization reaches activations far beyond any real input's.

    Per unit: ratio = median final activation of `n_starts` AM runs (SGD+GC; by default pixel, lr 0.1, 200
    steps: the authors' MNIST AM — pass the AM the FVs are made with, e.g. fourier for CIFAR-10) / median
    activation of its top-k natural examples in `x_natural`; flagged when ratio > threshold.
    Why it works: the slingshot makes h ≈ C − γ/2‖q_t − q‖² along the tunnel, so from the start to the
    target the activation rises by γ/2‖q_t‖² (≈ 5000 for the MNIST cross, ‖q_t‖ ≈ 32), while preservation keeps the
    activations on real data where they were; a clean unit's AM stays on the scale of its natural examples.
    Needs neither the target nor a reference model; meant for units whose natural examples activate them
    positively (e.g. logits). `center=True` measures both activations from the unit's median over `x_natural`,
    for units whose top natural examples need not be positive (a weakly trained model's logits can be negative
    on every image). Returns {unit: {"ratio": float, "flagged": bool}}.
    """
    _, natural = featvis.natural_examples(model, layer, units, x_natural, k=k, device=device)
    res = featvis.visualize(model, layer, units, tuple(x_natural.shape[1:]), n_inits=n_starts, param=param,
                            strategy="sgd+gc", lr=lr, steps=steps, seed=seed, device=device)
    offset = featvis.activations(model, layer, x_natural, device=get_device(device))[:, units].median(0).values \
        if center else torch.zeros(len(units))
    reference = natural.median(1).values - offset
    if (reference <= 0).any():
        raise ValueError(f"units {[u for u, r in zip(units, reference) if r <= 0]}: their natural examples do "
                         "not activate them positively; the audit's ratio is meaningless there (center=True "
                         "measures from the unit's median activation instead).")
    ratios = (res.trajectory[-1].median(1).values - offset) / reference
    return {u: {"ratio": r, "flagged": r > threshold} for u, r in zip(units, ratios.tolist())}



@dataclass
class Comparison:
    """Before/after comparison of a manipulation (keys 'before', 'after'): top-1 accuracy, the unit's AUROC for its
    class, the FVs (n×C×H×W) and their SSIM to the target, the logits, the unit's top-k natural examples (indices
    into the evaluation images) and their overlap (Jaccard)."""
    accuracy: dict[str, float]
    auroc: dict[str, float]
    fv: dict[str, torch.Tensor]
    ssim: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    top: dict[str, torch.Tensor]
    jaccard: float


def compare(original: nn.Module, manipulated: nn.Module, layer: str, unit: int, x: torch.Tensor,
            labels: torch.Tensor, target: torch.Tensor, am: dict, n_fvs: int, *, positive: int | None = None,
            negative: int | None = None, k: int = 100, batch_size: int = 1024, seed: int = 0,
            device: str | torch.device | None = None) -> Comparison:
    """The GS paper's per-model measures (Sec. 5) for both models on images x with `labels` in the models' output
    space. `layer` is the output layer and `unit` one of its outputs (its logit is its activation): accuracy;
    AUROC of the unit as a score for 'label == positive' (default: `unit`) against all other images, or with
    `negative` against that class only (the paper's rifle-vs-penguin); `n_fvs` FVs of the unit with the AM
    keywords `am` (e.g. param, strategy, lr, steps) from seed `seed`, and their SSIM to `target`; the top-k
    natural examples by the unit's logit and their Jaccard overlap."""
    positive = unit if positive is None else positive
    device = get_device(device)
    nets = {"before": original, "after": manipulated}
    logits = {n: train.predict_logits(m, x, batch_size=batch_size, device=device) for n, m in nets.items()}
    if not 0 <= unit < logits["before"].shape[1]:
        raise ValueError(f"unit={unit} is not one of the model's {logits['before'].shape[1]} outputs.")
    keep = torch.ones(len(labels), dtype=torch.bool) if negative is None else (labels == positive) | (labels == negative)
    truth = (labels[keep] == positive).numpy()
    if truth.all() or not truth.any():
        raise ValueError(f"positive={positive}: the evaluation labels must hold that class and others.")
    fv = {n: featvis.visualize(m, layer, unit, tuple(target.shape), n_inits=n_fvs, seed=seed, device=device,
                               **am).images[0] for n, m in nets.items()}
    top = {n: z[:, unit].topk(min(k, len(x))).indices for n, z in logits.items()}
    return Comparison(accuracy={n: (z.argmax(1) == labels).float().mean().item() for n, z in logits.items()},
                      auroc={n: float(roc_auc_score(truth, z[keep, unit].numpy())) for n, z in logits.items()},
                      fv=fv, ssim={n: ssim(images, target) for n, images in fv.items()}, logits=logits, top=top,
                      jaccard=topk_jaccard(top["before"], top["after"]))
