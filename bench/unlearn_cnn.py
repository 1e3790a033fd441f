"""Benchmark (run on demand): one second-order unlearning update of the whole MNIST CNN vs one epoch of
training. `python bench/unlearn_cnn.py [--n-train 20000] [--hessian-rows 2000] [--cg-iterations 30]`.

The update is the label-repair request of notebook 07 (40 % of each class flipped s → 9 − s):
Gauss-Newton curvature over all parameters, H estimated on `--hessian-rows` rows, conjugate gradient with a
fixed iteration count (tol 0, so every run does the same work). Each measurement runs in a fresh process so
its peak memory is its own: wall time, gradient evaluations, full-model pass equivalents
(`gsmu.mu.cost`: a Hessian-vector product counts two passes) and peak resident memory above the process's
baseline (CPU) or peak allocated GPU memory (CUDA). Prints both and the ratio update / epoch.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(job: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    from gsmu.mu import poison
    from gsmu.base import train

    torch.set_num_threads(args.threads)
    sc = poison.make_scenario("mnist", 0.4, n_train=args.n_train, seed=0)  # cached after the first run
    device = next(sc.poisoned.parameters()).device
    base = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if job == "prepare":
        queue.put(None)
        return
    if job == "update":
        _, row = poison.run_method(sc, "second-order", curvature="gauss-newton", damping=args.damping,
                                   hessian_rows=args.hessian_rows, max_iter=args.cg_iterations, tol=1e-30)
        evals = row["grad_evals"], row["passes"]
    else:
        model = poison.build_model("mnist")
        train.fit_classifier(model, sc.x, sc.y_clean, **{**sc.recipe, "epochs": 1}, progress=False)
        evals = len(sc.x), float(len(sc.x))  # one full pass per image
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    queue.put((seconds, evals, memory))


def run(job: str, args: argparse.Namespace) -> tuple[float, tuple[int, float], float] | None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(job, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--hessian-rows", type=int, default=2000)
    parser.add_argument("--cg-iterations", type=int, default=30)
    parser.add_argument("--damping", type=float, default=1e3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run("prepare", args)  # trains and caches the scenario's models outside the measurements
    (t_u, (e_u, p_u), m_u), (t_e, (e_e, p_e), m_e) = run("update", args), run("epoch", args)
    print(f"MNIST CNN, {args.n_train} images, {args.threads} thread(s)")
    print(f"second-order update (whole model, Gauss-Newton, CG {args.cg_iterations} it., H on "
          f"{args.hessian_rows} rows): {t_u:7.2f} s, {e_u:>9,} gradient evals, {p_u:>11,.0f} pass equivalents, "
          f"peak memory {m_u:7.1f} MiB")
    print(f"one training epoch:                                          {t_e:7.2f} s, {e_e:>9,} gradient evals, {p_e:>11,.0f} pass equivalents, "
          f"peak memory {m_e:7.1f} MiB")
    print(f"ratio update / epoch: time {t_u / t_e:.2f}x, gradient evals {e_u / e_e:.2f}x, pass equivalents {p_u / p_e:.2f}x, memory {m_u / m_e:.2f}x")


if __name__ == "__main__":
    main()
