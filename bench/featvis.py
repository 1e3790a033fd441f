"""Benchmark: FVs of 10 output units × 8 inits of the MNIST CNN (pixel, SGD+GC, lr 0.1, 200 steps),
batched in one call versus one unit and one init at a time (the way lucent and horama run).
Prints both times and their ratio, measured in this one run. Issue 3's target: ratio ≥ 5 on 2 CPU cores.
Usage: python bench/featvis.py [--steps 200] [--threads 2]
"""
import argparse
import time

import torch

from gsmu.gs import featvis
from gsmu.base.models import MnistCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MnistCNN().eval()  # the timing does not depend on the weights
    kw = dict(image_shape=(1, 28, 28), strategy="sgd+gc", lr=0.1, steps=args.steps)
    start = time.perf_counter()
    featvis.visualize(model, "out", list(range(10)), n_inits=8, seed=0, **kw)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for unit in range(10):
        for i in range(8):
            featvis.visualize(model, "out", unit, n_inits=1, seed=i, **kw)
    looped = time.perf_counter() - start
    print(f"10 units x 8 inits, {args.steps} steps, {args.threads} threads: batched {batched:.2f} s, "
          f"one at a time {looped:.2f} s, speed-up {looped / batched:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
