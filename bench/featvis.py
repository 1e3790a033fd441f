"""Benchmark: activation maximization (AM) of the MNIST CNN at the hardware's throughput (issue 15, item 4).

Measured in this one run, for each thread count, with the variants interleaved in every repeat (median of
`--repeats`; the CPU may be shared, so only numbers of one run are compared):
- yardstick: a plain forward + backward to the INPUT (the input gradient AM needs) of `MnistCNN` on a batch of
  10 units × 8 inits = 80 images, in images·steps per second;
- batched AM: `featvis.visualize` of 10 output units × 8 inits (pixel, SGD+GC, lr 0.1), its rate and its
  fraction of the yardstick (target ≥ 0.67, i.e. within 1.5×);
- the loop: one unit and one init per call (the way lucent and horama run), `--loop-calls` of the 80 calls
  timed (`--loop-calls-multi` with several threads, where each call is slow) and scaled to 80; loop ratio = loop time / batched time (target ≥ 5 with one thread),
  printed beside its ceiling loop time / yardstick time: where one-image steps are cheap next to a batch's,
  no batched run can reach the target;
- with more than one thread: the batched AM at the library's default thread count (`gsmu.base.runtime.
  cpu_threads`: `OMP_NUM_THREADS`, else 1) while torch itself is set to that many threads.
The thread count reaches the library through `OMP_NUM_THREADS` (read at every call), the yardstick through
`torch.set_num_threads`.
With `--device cuda` the same comparison runs on the GPU (timings end with a device synchronize; the thread
count then only sets the CPU side).
Usage: python bench/featvis.py [--steps 200] [--repeats 3] [--threads 1 2] [--loop-calls 80] [--loop-calls-multi 4]
       [--device cpu]
"""
import argparse
import os
import statistics
import time

import torch

from gsmu.base.models import MnistCNN
from gsmu.base.runtime import get_device
from gsmu.gs import featvis

UNITS, INITS = list(range(10)), 8
N = len(UNITS) * INITS


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def yardstick(model: torch.nn.Module, steps: int) -> float:
    """Seconds for `steps` forward + backward passes to the input on N images (no optimizer, no clip)."""
    device = next(model.parameters()).device
    x = torch.randn(N, *model.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    x.requires_grad_(True)
    rows, cols = torch.arange(N, device=device), torch.tensor(UNITS, device=device).repeat_interleave(INITS)
    start = clock(device)
    for _ in range(steps):
        torch.autograd.grad(model(x)[rows, cols].sum(), x)
    return clock(device) - start


def batched(model: torch.nn.Module, kw: dict) -> float:
    start = clock(kw["device"])
    featvis.visualize(model, "out", UNITS, n_inits=INITS, seed=0, **kw)
    return clock(kw["device"]) - start


def looped(model: torch.nn.Module, kw: dict, calls: int) -> float:
    """Seconds for all N one-unit-one-init calls, from the first `calls` of them (every call does the same work)."""
    pairs = [(u, i) for u in UNITS for i in range(INITS)]
    pairs = pairs[::max(1, len(pairs) // calls)][:calls]
    start = clock(kw["device"])
    for unit, i in pairs:
        featvis.visualize(model, "out", unit, n_inits=1, seed=i, **kw)
    return (clock(kw["device"]) - start) * N / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--loop-calls", type=int, default=80, help="how many of the 80 loop calls to time")
    parser.add_argument("--loop-calls-multi", type=int, default=4, help="the same with more than one thread")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if min(args.steps, args.repeats, *args.threads) < 1 or not all(1 <= c <= N for c in (args.loop_calls,
                                                                                        args.loop_calls_multi)):
        parser.error(f"steps, repeats and threads must be >= 1, loop-calls and loop-calls-multi in 1..{N}")
    torch.manual_seed(0)
    device = get_device(args.device)
    model = MnistCNN().eval().to(device)  # the timing does not depend on the weights
    kw = dict(image_shape=model.input_shape, strategy="sgd+gc", lr=0.1, steps=args.steps, device=device)
    work = N * args.steps  # images·steps of one batched run
    saved = os.environ.get("OMP_NUM_THREADS")
    print(f"MnistCNN, {len(UNITS)} units x {INITS} inits = {N} images, {args.steps} steps, "
          f"median of {args.repeats}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    try:
        for threads in args.threads:
            times: dict[str, list[float]] = {}
            calls = args.loop_calls if threads == 1 else args.loop_calls_multi
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
            yardstick(model, 2), batched(model, {**kw, "steps": 2})  # warm-up: oneDNN primitives, allocator
            for _ in range(args.repeats):
                os.environ["OMP_NUM_THREADS"] = str(threads)
                torch.set_num_threads(threads)
                variants = {"yard": lambda: yardstick(model, args.steps),
                            "batched": lambda: batched(model, kw),
                            "loop": lambda: looped(model, kw, calls)}
                for name, run in variants.items():
                    times.setdefault(name, []).append(run())
                if threads > 1:  # torch at `threads`, the library at its default (no OMP_NUM_THREADS: 1 thread)
                    os.environ.pop("OMP_NUM_THREADS")
                    times.setdefault("default", []).append(batched(model, kw))
            t = {name: statistics.median(v) for name, v in times.items()}
            rate = {name: work / s for name, s in t.items() if name != "loop"}
            print(f"{threads} thread(s): yardstick {rate['yard']:.0f} images·steps/s; batched AM {t['batched']:.2f} s = "
                  f"{rate['batched']:.0f} images·steps/s, {rate['batched'] / rate['yard']:.2f} of the yardstick "
                  f"(target >= 0.67); loop {t['loop']:.2f} s ({calls} of {N} calls timed), "
                  f"loop ratio {t['loop'] / t['batched']:.1f}x (target >= 5x with one thread; "
                  f"{t['loop'] / t['yard']:.1f}x if the batched AM ran at the yardstick's rate)")
            if "default" in t:
                print(f"  torch at {threads} threads, library default ({featvis.__name__} via "
                      f"runtime.cpu_threads, 1 thread): batched AM {t['default']:.2f} s = "
                      f"{work / t['default']:.0f} images·steps/s")
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


if __name__ == "__main__":
    main()
