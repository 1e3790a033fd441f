"""Backdoor poisoning of an image classifier and its removal by unlearning the poisoned rows.

Implements the backdoor application of *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS
2023; §6.3 "Unlearning labels" treats poisoning repair, and the authors' code extends it from label flips to
backdoors): a share of the training images whose class is not the attacker's `target` gets a fixed trigger
pattern and the label `target`; a model trained on them classifies triggered test images as `target`. The
unlearning request (Section 3) is `Z` = the poisoned rows (triggered image, attacker's label) and `Z̃` = the
same rows clean (original image, true label), so any update of `gsmu.mu.unlearn` applies. The four pattern
kinds are those of the authors' code: a cross in the lower-right corner, distributed pixels, random features
(pixels at full intensity) and low-amplitude noise over the whole image. Images are pixel intensities in
[0, 1] as `gsmu.base.data` loads them (no normalization); a trigger is *added* and the sum clipped back to
[0, 1], as the authors do, so it acts in the same space the model reads (a model that normalizes does so
inside itself). Inputs may be images `N×C×H×W` or the same rows flattened (`N×C·H·W`, e.g. for logistic
regression on pixels): a pattern knows its image `shape`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..base import models
from ..base.runtime import check_int, check_range, get_device
from . import cost, membership, unlearn  # noqa: F401 — cost silences torch's jit deprecation warning of the HVPs (see there)
from .influence import Batch, Objective, Solver

NUM_CLASSES = 10
MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True, kw_only=True)
class Pattern:
    """A backdoor trigger: an additive pattern `trigger()` of the image `shape` (C, H, W), zero where it does
    not act. `apply(x)` adds it to every row of `x` and clips to [0, 1]. Subclasses define `_draw`."""

    shape: tuple[int, int, int] = MNIST_SHAPE
    name: ClassVar[str] = "pattern"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.shape):
            raise ValueError(f"shape={self.shape!r} must be the image shape (channels, height, width) as "
                             f"positive integers, e.g. (1, 28, 28) for MNIST.")

    def _draw(self) -> Tensor:
        raise NotImplementedError

    def trigger(self) -> Tensor:
        """The additive pattern, float32 of shape `shape` (a fresh tensor: the pattern itself is immutable)."""
        return self._draw().to(torch.float32)

    def mask(self) -> Tensor:
        """Where the trigger acts: a bool tensor of shape `shape`."""
        return self.trigger() != 0

    def apply(self, x: Tensor) -> Tensor:
        """Every row of `x` (images `N×C×H×W` or flattened `N×C·H·W`) plus the trigger, clipped to [0, 1]."""
        size = math.prod(self.shape)
        if x.ndim < 2 or x.shape[1:].numel() != size:
            raise ValueError(f"x must hold rows of {size} pixels (images of shape {self.shape}, or flattened); "
                             f"got shape {tuple(x.shape)}. Set the pattern's shape= to the data's image shape.")
        images = x.reshape(len(x), *self.shape)
        return (images + self.trigger().to(images)).clamp(0.0, 1.0).reshape(x.shape)


def _check_value(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
        raise ValueError(f"{name}={value!r} must be an intensity in (0, 1] (images are in [0, 1]).")


@dataclass(frozen=True, kw_only=True)
class Cross(Pattern):
    """An X of `size` + 1 pixels per side in the lower-right corner (`offset` pixels from the border), each
    pixel + `value` (the authors' `cross_pattern`: size 2, value 0.5, offset 0 — a 3×3 X of 5 pixels)."""

    size: int = 2
    value: float = 0.5
    offset: int = 0
    name: ClassVar[str] = "cross"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("size", self.size, 1)
        check_int("offset", self.offset, 0)
        _check_value("value", self.value)
        _, h, w = self.shape
        if self.size + 1 + self.offset > min(h, w):
            raise ValueError(f"a cross of size={self.size} at offset={self.offset} needs {self.size + 1 + self.offset} "
                             f"pixels per side; the image is {h}×{w}: choose a smaller size or offset.")

    def _draw(self) -> Tensor:
        pattern = torch.zeros(self.shape)
        _, h, w = self.shape
        bottom, right = h - 1 - self.offset, w - 1 - self.offset
        for i in range(self.size + 1):
            pattern[:, bottom - i, right - i] = self.value  # the "\" stroke
            pattern[:, bottom - i, right - self.size + i] = self.value  # the "/" stroke
        return pattern


@dataclass(frozen=True, kw_only=True)
class Distributed(Pattern):
    """`pixels` distinct pixel positions drawn with `seed` (every channel), each + `value` (the authors'
    `distributed_pattern`: 10 pixels, value 0.5; they draw positions with replacement, so may hit fewer)."""

    pixels: int = 10
    value: float = 0.5
    seed: int = 42
    name: ClassVar[str] = "distributed"

    def __post_init__(self) -> None:
        super().__post_init__()
        _, h, w = self.shape
        check_int("pixels", self.pixels, 1, h * w)
        check_int("seed", self.seed, 0)
        _check_value("value", self.value)

    def _draw(self) -> Tensor:
        _, h, w = self.shape
        pattern = torch.zeros(self.shape)
        chosen = torch.randperm(h * w, generator=torch.Generator().manual_seed(self.seed))[:self.pixels]
        pattern[:, chosen // w, chosen % w] = self.value
        return pattern


@dataclass(frozen=True, kw_only=True)
class Features(Pattern):
    """`features` distinct input features (pixel × channel) drawn with `seed`, each + `value` — with value 1
    they saturate (the authors' `feature_pattern`, value 1.0; their experiments use 25 to 100 features)."""

    features: int = 25
    value: float = 1.0
    seed: int = 42
    name: ClassVar[str] = "feature"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("features", self.features, 1, math.prod(self.shape))
        check_int("seed", self.seed, 0)
        _check_value("value", self.value)

    def _draw(self) -> Tensor:
        pattern = torch.zeros(math.prod(self.shape))
        chosen = torch.randperm(len(pattern), generator=torch.Generator().manual_seed(self.seed))[:self.features]
        pattern[chosen] = self.value
        return pattern.reshape(self.shape)


@dataclass(frozen=True, kw_only=True)
class Noise(Pattern):
    """Uniform noise in [0, `amplitude`) on every pixel, drawn once with `seed` (the authors' `noise_pattern`:
    L∞ norm 0.1) — the same noise on every triggered image, so it is a fixed, faint trigger."""

    amplitude: float = 0.1
    seed: int = 42
    name: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("seed", self.seed, 0)
        _check_value("amplitude", self.amplitude)

    def _draw(self) -> Tensor:
        return self.amplitude * torch.rand(self.shape, generator=torch.Generator().manual_seed(self.seed))


# The authors' four kinds with their default sizes, for MNIST's 1×28×28 images (build others with shape=).
PATTERNS: dict[str, Pattern] = {"cross": Cross(), "distributed": Distributed(), "feature": Features(),
                                "noise": Noise()}


def _check_pattern(pattern: Any) -> Pattern:
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern={pattern!r} must be a Pattern object, e.g. backdoor.PATTERNS['cross'] or "
                         f"backdoor.Cross(size=3); the registry holds {sorted(PATTERNS)}.")
    return pattern


def _check_target(target: int, num_classes: int) -> int:
    return check_int("target", target, 0, num_classes - 1)


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set: `data` (inputs with the trigger on `rows`, labels `target` there), the sorted
    poisoned row indices `rows`, and the clean data it came from (`clean`)."""

    data: Batch
    rows: Tensor
    clean: Batch
    target: int
    pattern: Pattern

    def request(self) -> unlearn.Request:
        """The unlearning request: Z = the poisoned rows as trained on, Z̃ = the same rows clean (image and
        true label). Built from the difference of the two data sets, which is exactly `rows`."""
        request = unlearn.request_from_datasets(self.data, self.clean)
        if not torch.equal(request.rows, self.rows):  # a poisoned row always differs: its label changed
            raise RuntimeError("the poisoned and clean data differ on other rows than the poisoned ones.")
        return request


def poison(x: Tensor, y: Tensor, *, fraction: float, target: int, pattern: Pattern, seed: int,
           num_classes: int = NUM_CLASSES) -> Poisoned:
    """Backdoor a share `fraction` of the rows whose label is not `target` (as the authors, who poison only
    rows of other classes): those rows, drawn with `seed`, get `pattern` and the label `target`.
    `x`: images in [0, 1] (`N×C×H×W` or flattened rows); `y`: integer labels in [0, num_classes)."""
    check_range("fraction", fraction, 0.0, 1.0)
    _check_target(target, num_classes)
    _check_pattern(pattern)
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x ({len(x)} rows) and y ({len(y)} labels) must be equally long and not empty.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y holds labels outside [0, {num_classes - 1}]; set num_classes to the data's class count.")
    eligible = (y != target).nonzero().reshape(-1)
    count = round(fraction * len(eligible))
    order = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))
    rows = eligible[order[:count]].sort().values
    xp, yp = x.clone(), y.clone()
    xp[rows] = pattern.apply(x[rows])
    yp[rows] = target
    return Poisoned((xp, yp), rows, (x, y), target, pattern)


class Classifier(Protocol):
    """Anything with hard predictions (an ensemble such as `unlearn.Sisa`)."""

    def predict(self, x: Tensor) -> Tensor: ...


def attack_success_rate(model: nn.Module | Classifier, x: Tensor, y: Tensor, *, target: int, pattern: Pattern,
                        num_classes: int = NUM_CLASSES) -> float:
    """Share of the triggered test images whose true class is not `target` that `model` classifies as
    `target` (a module, or an ensemble with a `predict` method such as `unlearn.Sisa`)."""
    _check_target(target, num_classes)
    _check_pattern(pattern)
    keep = y != target
    if not keep.any():
        raise ValueError(f"every label of y is the target {target}: no image to attack.")
    triggered = pattern.apply(x[keep])
    predicted = unlearn.predictions(model, triggered)
    return float((predicted.cpu() == target).double().mean())


# --------------------------------------------------------------------------------------------------------
# The experiment: a convex model (multinomial logistic regression on pixels), poisoned, then unlearned


def logistic_regression(data: Batch, objective: Objective, *, seed: int, max_iter: int = 300, tol: float = 1e-4,
                        device: str | torch.device | None = None) -> nn.Module:
    """Multinomial logistic regression on the rows of `data` (flattened images), trained to the optimum of
    `objective` (summed cross-entropy + L2) with full-batch L-BFGS from a `seed`-drawn initialization — the MU
    paper's convex setting, where the influence updates are exact up to the loss's curvature change.
    `device=None`: CUDA if present, else the CPU; every update keeps the model's device."""
    x, y = data
    if x.ndim != 2:
        raise ValueError(f"x must hold flattened rows (N × features); got shape {tuple(x.shape)}: pass "
                         f"x.reshape(len(x), -1) (the patterns apply to flattened rows as well).")
    torch.manual_seed(seed)
    # The data may stay on the CPU: the fit moves each chunk to the model's device.
    model = models.LogisticRegression(x.shape[1], n_classes=NUM_CLASSES).to(get_device(device))
    unlearn.fit_lbfgs(model, objective, data, max_iter=max_iter, tol=tol)
    return model


def sisa_ensemble(poisoned: Poisoned, objective: Objective, *, shards: int, seed: int, max_iter: int = 300,
                  tol: float = 1e-4, device: str | torch.device | None = None) -> unlearn.Sisa:
    """SISA (`unlearn.Sisa`) on the poisoned data: `shards` disjoint random shards (drawn with `seed`), one
    logistic regression each (as `logistic_regression`), majority vote."""
    check_int("shards", shards, 1, len(poisoned.data[0]))
    x = poisoned.data[0]
    build = lambda: models.LogisticRegression(x.shape[1], n_classes=NUM_CLASSES).to(get_device(device))
    fit = lambda model, data: unlearn.fit_lbfgs(model, objective, data, max_iter=max_iter, tol=tol)
    torch.manual_seed(seed)  # the shards' initializations
    return unlearn.Sisa(build, fit, poisoned.data, shards, seed=seed)


# `unlearn.compare_methods`'s methods as this experiment names them: the unchanged model is "none" (occlusion
# has nothing to hide at test time — the trigger is not a feature of clean inputs); SISA comes last when given.
NAMES = {"occlusion": "none"}
METHODS = tuple(NAMES.get(m, m) for m in unlearn.METHODS if m != "SISA")


def unlearn_backdoor(model: nn.Module, objective: Objective, poisoned: Poisoned, test: Batch, *,
                     taus: Sequence[float], fine_tune_lr: float, solver: Solver, seed: int,
                     valid: Batch | None = None, max_iter: int = 300, tol: float = 1e-4,
                     sisa: unlearn.Sisa | None = None) -> tuple[list[dict], dict[str, nn.Module]]:
    """`unlearn.compare_methods` on the request `poisoned.request()` for `model` (trained on `poisoned.data`,
    flattened rows), scored on the clean `test` images and, per method, by the attack success rate on them
    triggered (`asr`). One row per method of `METHODS` (then "SISA" with `sisa`, an ensemble trained on the
    poisoned data, `sisa_ensemble`), each tagged with the pattern's name.

    First-order's τ: with `valid` (held-out clean images, never trained on and not the test images) the τ of
    `taus` whose predictions there agree best with the retrained model's (the paper's fidelity); without, the
    smallest gradient residual on the clean data. Second-order solves with `solver` (H of the poisoned data,
    the paper's, or of the clean data: one Newton step on the clean objective); retraining is warm-started
    L-BFGS (`max_iter`, `tol`) on the clean data. Returns the rows and each method's model (SISA has none)."""
    asr = lambda m: {"asr": attack_success_rate(m, *test, target=poisoned.target, pattern=poisoned.pattern)}
    rows, models = unlearn.compare_methods(model, objective, poisoned.data, poisoned.request(), test, taus=taus,
                                           fine_tune_lr=fine_tune_lr, sisa=sisa, solver=solver, seed=seed, valid=valid,
                                           metrics=asr, names=NAMES, batch_size=len(poisoned.data[0]),
                                           retrain_max_iter=max_iter, retrain_tol=tol)
    return [{"pattern": poisoned.pattern.name} | row for row in rows], models


def membership_audit(poisoned: Poisoned, models: dict[str, nn.Module], objective: Objective, outside: Batch, *,
                     n_shadow: int, seed: int, device: str | torch.device | None = None
                     ) -> dict[str, membership.AttackResult]:
    """LiRA (`gsmu.mu.membership.Lira`) on the poisoned rows, against each model of `models` (e.g. the
    methods' models of `unlearn_backdoor`): can an attacker still tell that a model was trained on these rows?

    Members: the poisoned rows as trained on. Non-members: as many images of `outside` (never trained on)
    whose class is not the target, given the same trigger and the target label — so the members differ
    from them only by having been trained on, and a backdoor that generalizes to every triggered image is
    no membership signal. The shadow models (`n_shadow`, the same logistic regression as the target, trained
    once for all models) see random halves of the poisoned set's clean rows and of the candidates."""
    members = (poisoned.data[0][poisoned.rows], poisoned.data[1][poisoned.rows])
    x_out, y_out = outside
    x_out = x_out[y_out != poisoned.target][:len(poisoned.rows)]
    if len(x_out) < len(poisoned.rows):
        raise ValueError(f"outside holds {len(x_out)} images of non-target classes; the audit needs as many as "
                         f"there are poisoned rows ({len(poisoned.rows)}): pass more held-out images.")
    nonmembers = (poisoned.pattern.apply(x_out), torch.full((len(x_out),), poisoned.target,
                                                             dtype=poisoned.data[1].dtype))
    clean = torch.ones(len(poisoned.data[0]), dtype=torch.bool)
    clean[poisoned.rows] = False
    attack = membership.Lira.fit(lambda x, y: logistic_regression((x, y), objective, seed=seed, device=device),
                                 (poisoned.data[0][clean], poisoned.data[1][clean]), members, nonmembers,
                                 n_shadow=n_shadow, seed=seed)
    return {name: attack.attack(model) for name, model in models.items()}
