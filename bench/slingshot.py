"""Benchmark: seconds per manipulation epoch of the Gradient Slingshot on the MNIST CNN at the authors'
batch sizes (manipulation batch 32, preservation batch 64; one epoch = one pass over the 50k training
images = 782 steps), and the share of a step spent in each part — above all the double backward
(backpropagating the gradient-form loss MSE(∇_q h, γ(q_t − q)) through the first backward).
Times are measured on a sample of steps in this one run and extrapolated to an epoch.
Usage: python bench/slingshot.py [--steps 60] [--threads 2]
"""
import argparse
import time

import torch

from gsmu.base import data
from gsmu.gs import featvis, slingshot
from gsmu.base.models import MnistCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    original = MnistCNN().eval()  # the timing does not depend on the weights
    model = MnistCNN().eval()
    model.load_state_dict(original.state_dict())
    s = slingshot.Settings()
    x = torch.rand(1024, 1, 28, 28)
    eta = featvis.parameterization("pixel", (1, 28, 28), original)
    q_t = eta.inverse(data.target_image("cross"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(0)
    parts = dict.fromkeys(["L_M forward + first backward", "double backward (L_M)", "L_P forward",
                           "L_P backward", "clip + AdamW"], 0.0)
    for step in range(args.steps + 5):  # 5 warm-up steps
        t = [time.perf_counter()]
        q = slingshot.sample_manipulation_set(q_t, s.manip_batch, s.sigma, generator=gen)
        l_m = slingshot.manipulation_loss(model, eta, s.layer, s.unit, q, q_t, s.gamma)
        t.append(time.perf_counter())
        optimizer.zero_grad()
        ((1 - s.alpha) * l_m).backward()
        t.append(time.perf_counter())
        batch = x[torch.randint(len(x), (s.pres_batch,), generator=gen)]
        l_p = slingshot.preservation_loss(model, original, s.layer, s.unit, batch, s.w)
        t.append(time.perf_counter())
        (s.alpha * l_p).backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        optimizer.step()
        t.append(time.perf_counter())
        if step >= 5:
            for name, a, b in zip(parts, t[:-1], t[1:]):
                parts[name] += b - a
    per_step = sum(parts.values()) / args.steps
    print(f"{args.threads} threads: {per_step * 1e3:.1f} ms/step, {per_step * 782:.1f} s per epoch (782 steps)")
    for name, total in parts.items():
        print(f"  {name:<30} {100 * total / sum(parts.values()):5.1f} %")


if __name__ == "__main__":
    main()
