"""Training, evaluation and the checkpoint cache that lets notebooks share trained models.

`cached_model` keys a checkpoint by the SHA-256 of the JSON of everything that determines the weights;
a rerun loads it (`torch.load(weights_only=True)`, checksum verified) instead of training again, and a
corrupted checkpoint is retrained with a warning. `fit_classifier` is the plain supervised loop used for
the papers' original models (the GS authors' recipe for the original small models: SGD lr 1e-3, momentum 0.9,
StepLR(20, 0.5), 30 epochs); `mnist_cnn` is the shared MNIST 6-layer CNN that every Gradient Slingshots notebook starts from.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import data, models
from .runtime import cache_dir, check_choice, check_profile, get_device

CACHE_FORMAT = 1  # bump when the checkpoint layout changes


def cache_key_digest(key: dict) -> str:
    """SHA-256 of the canonical JSON of `key` (what names a checkpoint)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_model(key: dict, build: Callable[[], nn.Module], fit: Callable[[nn.Module], Any],
                 device: str | torch.device | None = None) -> nn.Module:
    """A model trained by `fit(build())`, loaded from the checkpoint cache when `key` was trained before.

    `key` must hold everything that determines the weights (architecture, data, hyper-parameters, seed).
    Returns the model on `device`, in eval mode.
    """
    device = get_device(device)
    name = str(key.get("name", "model"))
    digest = cache_key_digest(key)
    path = cache_dir("checkpoints") / f"{name}-{digest[:16]}.pt"
    checksum = path.with_suffix(".sha256")
    model = build().to(device)
    if path.exists():
        try:
            if not checksum.exists() or checksum.read_text().strip() != _sha256_file(path):
                raise ValueError("checksum mismatch")
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            return model.eval()
        except Exception as e:  # any damage means: train again rather than use it
            warnings.warn(f"Checkpoint {path} is corrupted ({e}); retraining.")
            model = build().to(device)
    fit(model)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    checksum.write_text(_sha256_file(tmp))
    tmp.replace(path)
    (path.with_suffix(".json")).write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
    return model.eval()


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 128,
                   lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = "none", step_size: int = 20, gamma: float = 0.5, seed: int = 0,
                   device: str | torch.device | None = None, progress: bool = True) -> list[float]:
    """Train `model` with cross-entropy on (x, y) in place; return the mean loss of each epoch.

    `schedule`: 'none', 'linear' (decay to 0 over all steps — lands nearer a stationary point, which the
    influence updates assume) or 'step' (×gamma every `step_size` epochs).
    """
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_choice("schedule", schedule, ("none", "linear", "step"))
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}.")
    device = get_device(device)
    model.to(device).train()
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    sched = {"none": lambda step: 1.0,
             "linear": lambda step: 1.0 - step / total,
             "step": lambda step: gamma ** (step // (step_size * steps_per_epoch))}[schedule]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, sched)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(epochs), desc="train", disable=not progress)
    for _ in bar:
        order = torch.randperm(len(x), generator=gen)
        total_loss = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr_sched.step()
            total_loss += loss.item() * len(idx)
        losses.append(total_loss / len(x))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Model outputs for all of `x`, batched, in eval mode, returned on the CPU."""
    device = get_device(device)
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             device: str | torch.device | None = None) -> float:
    """Share of rows whose predicted class equals the label (one logit per row: class 1 when positive)."""
    logits = predict_logits(model, x, batch_size, device)
    pred = (logits > 0).long() if logits.dim() == 1 else logits.argmax(1)
    return (pred == y.to(pred.device)).float().mean().item()


MNIST_RECIPES = {
    # Measured on a 2-core CPU: 3 epochs Adam reach 98.7% in ~40 s on one thread.
    "quick": dict(epochs=3, batch_size=128, lr=1e-3, optimizer="adam", schedule="none"),
    # The authors' recipe for the original small models.
    "paper": dict(epochs=30, batch_size=64, lr=1e-3, optimizer="sgd", momentum=0.9, schedule="step",
                  step_size=20, gamma=0.5),
}


def mnist_cnn(profile: str, seed: int = 0, device: str | torch.device | None = None,
              progress: bool = True, dataset: str = "mnist") -> models.MnistCNN:
    """The shared 6-layer CNN of `profile`, trained on `dataset`'s train split (cached), in eval mode.

    `dataset` is 'mnist' (the Gradient Slingshots model; 50k train split) or 'fashion_mnist' (60k).
    """
    recipe = MNIST_RECIPES[check_profile(profile)]
    loader = {"mnist": data.load_mnist, "fashion_mnist": data.load_fashion_mnist}[
        check_choice("dataset", dataset, ("mnist", "fashion_mnist"))]
    name = "mnist_cnn" if dataset == "mnist" else f"mnist_cnn_{dataset}"
    key = {"name": name, "data": f"{dataset}:train", "seed": seed, **recipe}

    def fit(model: nn.Module) -> None:
        x, y = loader("train")
        fit_classifier(model, x, y, seed=seed, device=device, progress=progress, **recipe)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return models.MnistCNN()

    return cached_model(key, build, fit, device)
