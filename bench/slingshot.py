"""Benchmark: milliseconds per Gradient Slingshot step and the share of a step spent in each part — above all
the double backward (backpropagating the gradient-form loss MSE(∇_q h, γ(q_t − q)) through the first backward)
— for the MNIST CNN (pixel parameterization, output unit 0) and the CIFAR-10 VGG-9 A64 (fourier, output unit
3), both at the paper profile's batch sizes (manipulation batch 32, preservation batch 64; one epoch = one pass over
the 50k training images = 782 steps; GS paper, Sec. 5). Times are measured on a sample of steps in this one
run (after warm-up steps) and extrapolated to an epoch; the weights are random (timing does not depend on them).
On CUDA (`--device cuda`) every part's clock reads after a device synchronize, so a part's time is its own.
Usage: python bench/slingshot.py [--models mnist,vgg] [--steps 60] [--vgg-steps 10] [--threads 2] [--device cpu]
"""
import argparse
import time

import torch

from gsmu.base import data, models
from gsmu.base.runtime import get_device
from gsmu.gs import featvis, slingshot

PARTS = ("L_M forward + first backward", "double backward (L_M)", "L_P forward", "L_P backward", "clip + AdamW")


def setup(name: str):
    """(original, model copy, parameterization, target, settings, preservation data) of one benchmark model."""
    torch.manual_seed(0)
    if name == "mnist":
        original, shape = models.MnistCNN().eval(), (1, 28, 28)
        s, target = slingshot.Settings(), data.target_image("cross")
    else:
        original, shape = models.vgg("A", 64).eval(), (3, 32, 32)
        s = slingshot.Settings(layer="classifier.0", unit=3, param="fourier", alpha=0.025, lr=1e-4)
        target = 0.1 + 0.8 * data.target_image("cross", (32, 32), 3)
    model = type(original)() if name == "mnist" else models.vgg("A", 64)
    model.load_state_dict(original.state_dict())
    eta = featvis.parameterization(s.param, shape, original)
    return original, model.eval(), eta, eta.inverse(target), s, torch.rand(1024, *shape)


def bench(name: str, steps: int, device: torch.device, warmup: int = 3) -> tuple[float, dict[str, float]]:
    """Seconds per step and seconds per part (summed over `steps` measured steps)."""
    original, model, eta, q_t, s, x = setup(name)
    original, model, eta, q_t, x = original.to(device), model.to(device), eta.to(device), q_t.to(device), x.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    parts = dict.fromkeys(PARTS, 0.0)

    def clock() -> float:  # CUDA runs asynchronously: wait for the part's kernels before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for step in range(steps + warmup):
        t = [clock()]
        q = slingshot.sample_manipulation_set(q_t, s.manip_batch, s.sigma, generator=gen)
        l_m = slingshot.manipulation_loss(model, eta, s.layer, s.unit, q, q_t, s.gamma)
        t.append(clock())
        optimizer.zero_grad()
        ((1 - s.alpha) * l_m).backward()
        t.append(clock())
        batch = x[torch.randint(len(x), (s.pres_batch,), generator=gen, device=device)]
        l_p = slingshot.preservation_loss(model, original, s.layer, s.unit, batch, s.w)
        t.append(clock())
        (s.alpha * l_p).backward()
        t.append(clock())
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        optimizer.step()
        t.append(clock())
        if step >= warmup:
            for part, a, b in zip(parts, t[:-1], t[1:]):
                parts[part] += b - a
    return sum(parts.values()) / steps, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist,vgg", help="comma-separated: mnist (6-layer CNN), vgg (VGG-9 A64)")
    parser.add_argument("--steps", type=int, default=60, help="measured steps for the MNIST CNN")
    parser.add_argument("--vgg-steps", type=int, default=10, help="measured steps for VGG-9 A64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in ("mnist", "vgg")]
    if bad or not names:
        parser.error(f"--models: unknown {bad}; use mnist and/or vgg")
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    label = {"mnist": "MNIST 6-layer CNN (pixel, unit 0)", "vgg": "CIFAR-10 VGG-9 A64 (fourier, unit 3)"}
    for name in names:
        per_step, parts = bench(name, args.steps if name == "mnist" else args.vgg_steps, device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
        print(f"{label[name]}, {where}: {per_step * 1e3:.1f} ms/step, "
              f"{per_step * 782:.1f} s per epoch (782 steps)")
        for part, total in parts.items():
            print(f"  {part:<30} {100 * total / sum(parts.values()):5.1f} %")


if __name__ == "__main__":
    main()
