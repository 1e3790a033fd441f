"""Training, evaluation and the checkpoint cache that lets notebooks share trained models.

`cached_model` keys a checkpoint by the SHA-256 of the JSON of everything that determines the weights;
a rerun loads it (`torch.load(weights_only=True)`, checksum verified, weights finite, and — where the caller
gives a `probe` — the loss on a small fixed batch equal to the one recorded at save time) instead of
training again; a checkpoint failing any check is discarded with a warning and retrained. Processes that
need the same key take its file lock, so it is trained once: the others wait, then load it. Every file is
written atomically (`runtime.atomic_write`), so a crash or kill never leaves a partial checkpoint visible.
The SHA-256 helpers (`sha256_bytes`, `sha256_file`, `tensor_digest`, `state_digest`) live in
`gsmu.base.runtime` and are re-exported here; the data cache and the experiments' cache keys use them.

`fit_classifier` is the plain supervised loop used for the papers' original models (the GS authors' recipe
for the original small models: SGD lr 1e-3, momentum 0.9, StepLR(20, 0.5), 30 epochs); `mnist_cnn` is the
shared MNIST 6-layer CNN that every Gradient Slingshots notebook starts from.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import data, models
from .runtime import (atomic_write, progress_off, cache_dir, check_choice, check_int, check_nonempty,  # noqa: F401
                      check_positive, check_profile, file_lock, get_device, sha256_bytes, sha256_file,
                      stale_temporaries, state_digest, tensor_digest)

CACHE_FORMAT = 1  # bump when the checkpoint layout changes
PROBE_TOLERANCE = (1e-3, 1e-2)  # absolute, relative: float summation order and TF32 differ; damage does not


def cache_key_digest(key: dict) -> str:
    """SHA-256 of the canonical JSON of `key` (what names a checkpoint)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **key}, sort_keys=True, default=str)
    return sha256_bytes(text.encode())


def checkpoint_path(key: dict) -> Path:
    """Where the checkpoint of `key` lives: `<cache>/checkpoints/<name>-<digest>.pt`.

    Beside it: `.sha256` (the weights' SHA-256, then optionally `probe_loss <value>`), `.json` (the key,
    for people) and `.pt.lock` (the lock writers and readers of this key take).
    """
    if not isinstance(key, dict) or not key:
        raise ValueError(f"key={key!r} must be a non-empty dict of everything that determines the weights.")
    return cache_dir("checkpoints") / f"{key.get('name', 'model')}-{cache_key_digest(key)[:16]}.pt"


def nonfinite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or ±inf."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def loss_probe(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], float]:
    """A probe for `cached_model`: the model's mean cross-entropy on the fixed batch (x, y), in eval mode.

    Handles multi-class logits (N×C), one logit per row (binary, N) and sequence logits (N×T×C with N×T
    targets).
    """
    check_nonempty("x", x)
    if len(x) != len(y):
        raise ValueError(f"the probe batch has {len(x)} inputs but {len(y)} targets.")

    @torch.no_grad()
    def probe(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        out = model(x.to(device)).float()
        target = y.to(device)
        if out.dim() == 1:
            loss = F.binary_cross_entropy_with_logits(out, target.float())
        else:
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        model.train(was_training)
        return float(loss)
    return probe


class _Rejected(Exception):
    """A checkpoint that exists but must not be used."""


def _read_sidecar(sidecar: Path) -> tuple[str, float | None]:
    if not sidecar.exists():
        raise _Rejected("no checksum file")
    try:
        lines = sidecar.read_text().split("\n")
        probe = None
        for line in lines[1:]:
            if line.startswith("probe_loss "):
                probe = float(line.split()[1])
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as e:
        raise _Rejected(f"unreadable checksum file: {e}") from e
    return lines[0].strip(), probe


def _load(path: Path, model: nn.Module, probe: Callable[[nn.Module], float] | None) -> nn.Module:
    """Load `path` into `model` after every check; raise _Rejected saying which check failed."""
    expected, recorded = _read_sidecar(path.with_suffix(".sha256"))
    if sha256_file(path) != expected:
        raise _Rejected("checksum mismatch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickles, truncated zips, ...
        raise _Rejected(f"unreadable: {e}") from e
    if not isinstance(state, dict):
        raise _Rejected(f"holds a {type(state).__name__}, not a state dict")
    bad = nonfinite_entries(state)
    if bad:
        raise _Rejected(f"non-finite weights in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise _Rejected(f"does not fit the model: {e}") from e
    model.eval()
    if probe is not None and recorded is not None:
        value = probe(model)
        atol, rtol = PROBE_TOLERANCE
        if not abs(value - recorded) <= atol + rtol * abs(recorded):  # also catches NaN
            raise _Rejected(f"loss on the probe batch is {value:.6g}, the checkpoint recorded {recorded:.6g}")
    return model


def _clear_stale(*paths: Path) -> None:
    """Delete the temporary files of writers that were killed (call under the key's lock: writers hold it)."""
    for tmp in [t for p in paths for t in stale_temporaries(p)]:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only cache
            pass


def cached_model(key: dict, build: Callable[[], nn.Module], fit: Callable[[nn.Module], Any],
                 device: str | torch.device | None = None, *,
                 probe: Callable[[nn.Module], float] | None = None) -> nn.Module:
    """A model trained by `fit(build())`, loaded from the checkpoint cache when `key` was trained before.

    `key` must hold everything that determines the weights (architecture, data, hyper-parameters, seed).
    `probe(model) -> float` (optional, e.g. `loss_probe(x[:64], y[:64])`) is recorded when the checkpoint
    is saved and must match on load. The key's file lock is held while loading or training, so parallel
    processes train a key once. Training that yields NaN/inf weights raises a FloatingPointError instead of
    caching them. Returns the model on `device`, in eval mode.
    """
    device = get_device(device)
    path = checkpoint_path(key)
    sidecar = path.with_suffix(".sha256")
    with file_lock(path):
        _clear_stale(path, sidecar)
        if path.exists():
            try:
                return _load(path, build().to(device), probe)
            except _Rejected as e:  # any damage means: train again rather than use it
                warnings.warn(f"Checkpoint {path} is corrupted ({e}); discarding it and retraining.")
                path.unlink(missing_ok=True)
                sidecar.unlink(missing_ok=True)
        model = build().to(device)
        fit(model)
        model.eval()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        bad = nonfinite_entries(state)
        if bad:
            raise FloatingPointError(f"training {key.get('name', 'model')!r} produced non-finite weights "
                                     f"({', '.join(bad[:3])}); nothing was cached. Lower the learning rate "
                                     f"or check the data for NaN/inf.")
        digest: list[str] = []

        def write(tmp: Path) -> None:
            torch.save(state, tmp)
            digest.append(sha256_file(tmp))

        atomic_write(path, write)
        lines = [digest[0]]
        if probe is not None:
            value = probe(model)
            if math.isfinite(value):
                lines.append(f"probe_loss {value!r}")
        atomic_write(sidecar, "\n".join(lines) + "\n")  # after the weights: a crash in between reads as damage
        atomic_write(path.with_suffix(".json"), json.dumps(key, indent=1, sort_keys=True, default=str))
    return model


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
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_int("step_size", step_size, 1)
    check_int("seed", seed, 0)
    check_positive("lr", lr)
    check_positive("gamma", gamma)
    if not (0 <= momentum < 1):
        raise ValueError(f"momentum={momentum!r} must be in [0, 1).")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0.")
    check_nonempty("x", x)
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
    bar = tqdm(range(epochs), desc="train", disable=progress_off(progress))
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


def eval_batch_size(device: torch.device) -> int:
    """Rows per forward pass when only predictions are needed: 256 on a CPU, where a batch's activations then
    stay in cache (one thread: the MNIST CNN scores its 10k test images 2.8x, the narrowed CIFAR-10 CNN 2.4x faster
    than at 4096, the same predictions); 4096 on a GPU, which wants large batches."""
    return 256 if device.type == "cpu" else 4096


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None = None,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Model outputs for all of `x`, batched (`eval_batch_size` by default), in eval mode, returned on the CPU."""
    device = get_device(device)
    batch_size = eval_batch_size(device) if batch_size is None else batch_size
    check_int("batch_size", batch_size, 1)
    check_nonempty("x", x)
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             device: str | torch.device | None = None) -> float:
    """Share of rows whose predicted class equals the label (one logit per row: class 1 when positive)."""
    logits = predict_logits(model, x, batch_size, device)
    pred = (logits > 0).long() if logits.dim() == 1 else logits.argmax(1)
    return (pred == y.to(pred.device)).float().mean().item()


MNIST_RECIPES = {
    # Measured on a 2-core CPU, one thread: 2 epochs Adam reach 98.7 % in ~30 s (3 epochs: 98.8 %, ~45 s).
    "quick": dict(epochs=2, batch_size=128, lr=1e-3, optimizer="adam", schedule="none"),
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
    check_int("seed", seed, 0)
    check_choice("dataset", dataset, tuple(data.IMAGE_LOADERS))
    name = "mnist_cnn" if dataset == "mnist" else f"mnist_cnn_{dataset}"
    key = {"name": name, "data": f"{dataset}:train", "seed": seed, **recipe}
    if dataset != "mnist":  # its own pixel statistics (models cached before they were used must not be reused)
        key["normalize"] = dataset

    def fit(model: nn.Module) -> None:
        x, y = data.load_images(dataset, "train")
        fit_classifier(model, x, y, seed=seed, device=device, progress=progress, **recipe)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return models.MnistCNN(dataset=dataset)

    # Cheap probe: the loss on 16 fixed noise images — a changed architecture or damaged weights move it.
    noise = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return cached_model(key, build, fit, device, probe=loss_probe(noise, torch.arange(16) % 10))
