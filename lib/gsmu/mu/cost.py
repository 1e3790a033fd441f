"""One efficiency measure for every unlearning experiment: cost in full-model pass equivalents, and the
median wall time of repeated calls on one thread.

Wall time depends on the machine, so claims use the **pass-equivalent** count (deterministic) and report
wall time as a metric beside it. The unit, `PASS`, is one forward + backward pass of ONE example through
the WHOLE model. The counting rules (multiply-accumulates, MACs, of the affine layers stand for FLOPs):

- a per-example gradient of the whole model: 1 pass;
- a forward pass alone: `FORWARD` = 1/3 pass (backward ≈ twice the forward's arithmetic);
- a Hessian-vector (or Gauss-Newton-vector) product: `HVP` = 2 passes (Pearlmutter's R-operator — a
  forward-over-backward — costs about two gradient evaluations);
- an operation that touches only some modules (a head-only update on features the frozen body computed
  once) costs its count times the share of the model's MACs in those modules (`mac_share`), so a head-only
  HVP is *not* a full pass: for the MNIST CNN's fc3 + out it is under 1 % of one.
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..base.runtime import device_of

# torch's forward-mode AD (torch.func.jvp, used for Hessian-vector products) scripts its own
# decompositions on first use and warns that torch.jit.script is deprecated — torch's internals, not ours;
# silenced here (every MU experiment module imports this one) so notebook outputs stay clean.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
# Switching the mkldnn backend off for the LSTM's double backward makes torch warn about Intel-GPU TF32.
warnings.filterwarnings("ignore", message=r"TF32 acceleration on top of oneDNN", category=UserWarning)

PASS = 1.0
FORWARD = 1.0 / 3.0
HVP = 2.0


def layer_macs(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Multiply-accumulates per example of every Linear, Conv and LSTM module of `model` (by name),
    measured with forward hooks on one batch `example` (its first dimension is the batch)."""
    if example.dim() < 1 or len(example) == 0:
        raise ValueError("example must be a non-empty batch (first dimension = examples).")
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str) -> Callable:
        def count(module: nn.Module, args: tuple, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            batch = len(args[0])
            if isinstance(module, nn.Linear):
                n = out.numel() // batch * module.in_features
            elif isinstance(module, nn.modules.conv._ConvNd):
                per_out = module.in_channels // module.groups
                for k in module.kernel_size:
                    per_out *= k
                n = out.numel() // batch * per_out
            else:  # nn.LSTM: 4 gates, input and recurrent products, per step and layer
                steps = out.shape[1] if module.batch_first else out.shape[0]
                n, size = 0, module.input_size
                for _ in range(module.num_layers):
                    n += 4 * module.hidden_size * (size + module.hidden_size) * steps
                    size = module.hidden_size * (2 if module.bidirectional else 1)
            macs[name] = macs.get(name, 0) + int(n)
        return count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.LSTM)):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example.to(device_of(model)))
    finally:
        for h in hooks:
            h.remove()
    if not macs:
        raise ValueError(f"{type(model).__name__} has no Linear, Conv or LSTM module to count.")
    return macs


def mac_share(model: nn.Module, example: Tensor, prefixes: Sequence[str] | None) -> float:
    """Share of `model`'s MACs in the modules whose names start with one of `prefixes` (None: all, 1.0)."""
    macs = layer_macs(model, example)
    if prefixes is None:
        return 1.0
    touched = sum(v for k, v in macs.items() if any(k == p or k.startswith(p + ".") for p in prefixes))
    if touched == 0:
        raise ValueError(f"no counted module of {type(model).__name__} starts with {list(prefixes)}; "
                         f"counted: {sorted(macs)}.")
    return touched / sum(macs.values())


def passes(*, gradients: float = 0, hvps: float = 0, forwards: float = 0, share: float = 1.0,
           forward_share: float = 1.0) -> float:
    """Pass equivalents of `gradients` per-example gradients and `hvps` per-example Hessian-vector products
    over modules holding `share` of the MACs, plus `forwards` forward passes over `forward_share`."""
    if min(gradients, hvps, forwards) < 0 or not (0 < share <= 1) or not (0 <= forward_share <= 1):
        raise ValueError(f"counts must be >= 0 and shares in (0, 1]; got gradients={gradients}, hvps={hvps}, "
                         f"forwards={forwards}, share={share}, forward_share={forward_share}.")
    return (gradients * PASS + hvps * HVP) * share + forwards * FORWARD * forward_share


def median_seconds(fn: Callable[[], object], repeats: int = 3, measured: Sequence[float] = ()) -> float:
    """Median wall time of `repeats` calls of `fn` (run it with one thread for comparable numbers). `measured`:
    wall times of calls of `fn` already made (e.g. the run whose result is reported); they count as repeats,
    so only the rest are run."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1.")
    times = list(measured)
    for _ in range(repeats - len(times)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
