"""Benchmark (run on demand): K-FAC for the CNN head's second-order update — an amortized direct solver and a CG
preconditioner — against plain CG and Nyström-preconditioned CG. `python bench/kfac_head.py [--tol 1e-4]
[--damping 1000] [--rank 50] [--repeats 3] [--head fc3|fc1] [--block-diagonal]`.

The request is notebook 07's label repair (MU paper §6.3): the MNIST CNN on the first 6000 training images,
40 % of each class flipped s → 9 − s, the quick profile's recipe, the update θ* − (H + d·I)⁻¹G over the
head (fc3 → ReLU → out, 11,014 parameters; `--head fc1`: fc1 → … → out, 173,182) with the Gauss-Newton H on a fixed subsample of `--hessian-rows`
rows (the notebook's settings). Solvers, all with the same damping d:
  (i) plain CG, (ii) CG preconditioned by K-FAC (`gsmu.mu.kfac`, built once on all rows' head inputs),
  (iii) the K-FAC direct solve (no HVP; one product with H to measure its residual), (iv) CG preconditioned
  by a rank-`--rank` Nyström sketch of the same H (`gsmu.mu.curvature.Nystrom`), and EK-FAC's variants
  of (ii) and (iii).
Prints, measured in one run on one thread: CG iterations to relative residual `--tol` (on the H each solve
is handed), per-request seconds (median of `--repeats`; the head's inputs computed once beforehand, as for
every request on one model), per-request full-model pass equivalents (`gsmu.mu.cost`: request gradients and
HVPs over the head's MAC share, plus the solvers' own multiply-accumulates), the one-off cost of each
preconditioner/factorization (seconds and passes), the requests that amortize it against plain CG
(`curvature.break_even`), and "% restored" of the poisoning gap (`Scenario.restored`) with the measured
residual of each solution on that H — so the quality of the direct K-FAC solve is visible beside its cost.
`--block-diagonal` adds CG preconditioned by, and a direct solve with, the exact per-layer blocks of H (the
best a block-diagonal approximation such as K-FAC can do; forms the dense H, minutes). Targets printed beside: PCG needs fewer iterations than plain CG; a finite break-even count.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections import OrderedDict

import torch
from torch import nn

from gsmu.mu import cost, poison, unlearn
from gsmu.mu.curvature import Nystrom, break_even
from gsmu.mu.influence import CG, Curvature, ParamSpace, Solver, SolveStats, gradient_difference
from gsmu.mu.kfac import Kfac, KfacSolver
from gsmu.mu.profiles import LabelPoisoning


class _Apply(Solver):
    """x = M⁻¹ b for a fixed map M⁻¹ (here H's exact per-layer blocks): a direct block-diagonal solve, its
    residual measured with one product with the H handed in."""

    name = "block-diagonal"

    def __init__(self, apply, damping: float):
        self.apply, self.damping = apply, damping

    def solve(self, h, b, *, generator=None):
        start = time.perf_counter()
        x = self.apply(b)
        residual = float((b - h(x) - self.damping * x).norm() / b.norm())
        return x, SolveStats(self.name, 1, residual, True, False, 1, time.perf_counter() - start, self.damping)


def _score(sc: poison.Scenario, new_head: nn.Module) -> dict:
    """Test and validation accuracy and % restored (`Scenario.restored`) of the CNN with `new_head`'s
    parameters — what `poison.run_method` reports, for any head (run_method knows fc3..out only)."""
    model = copy.deepcopy(sc.poisoned)
    unexpected = model.load_state_dict(new_head.state_dict(), strict=False).unexpected_keys
    assert not unexpected, unexpected
    acc = unlearn.accuracy(model, *sc.test)
    return {"accuracy": acc, "val_accuracy": unlearn.accuracy(model, *sc.val), "restored": sc.restored(acc)}


def _head(cnn: nn.Module, first: str) -> nn.Sequential:
    """fc3 → ReLU → out (notebook 07's "head", `poison._head_modules`) or fc1 → … → out (all dense layers)."""
    if first == "fc3":
        return poison._head_modules(cnn, "head")
    return nn.Sequential(OrderedDict([("fc1", cnn.fc1), ("relu1", nn.ReLU()), ("fc2", cnn.fc2), ("relu2", nn.ReLU()),
                                      ("fc3", cnn.fc3), ("relu3", nn.ReLU()), ("out", cnn.out)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--damping", type=float, default=1e3, help="notebook 07's choice on validation data")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual every CG run stops at")
    parser.add_argument("--max-iter", type=int, default=3000)
    parser.add_argument("--hessian-rows", type=int, default=2000)
    parser.add_argument("--rank", type=int, default=50, help="rank of the Nyström sketch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                        help="multiples of --damping tried as the preconditioner's own damping μ (PCG) and as "
                             "the direct K-FAC solve's damping (chosen on validation data, as notebook 07 does)")
    parser.add_argument("--head", choices=["fc3", "fc1"], default="fc3",
                        help="first dense layer of the head updated: fc3 (notebook 07) or fc1 (all four)")
    parser.add_argument("--block-diagonal", action="store_true",
                        help="also form the dense H (one HVP per parameter, minutes) and run CG preconditioned by "
                             "its EXACT per-layer diagonal blocks — the best any block-diagonal (K-FAC-like) "
                             "preconditioner can do, so K-FAC's two errors (Kronecker, dropped cross-layer blocks) "
                             "are told apart")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    recipe = LabelPoisoning.for_profile("quick").recipe
    sc = poison.make_scenario("mnist", 0.4, n_train=6000, recipe=recipe, seed=args.seed)  # cached CNNs
    objective, d = poison.objective(), args.damping
    head = _head(sc.poisoned, args.head)
    start = time.perf_counter()
    feats = poison.head_inputs(sc.poisoned, head, sc.x)
    body_seconds = time.perf_counter() - start
    space = ParamSpace(head)
    data = (feats, sc.y_poisoned)
    request = unlearn.fix_labels(feats, sc.y_poisoned, sc.y_clean, sc.rows, num_classes=poison.NUM_CLASSES)
    share = cost.mac_share(sc.poisoned, sc.x[:1], [n for n, m in head.named_children() if isinstance(m, nn.Linear)])
    pass_macs = sum(cost.layer_macs(sc.poisoned, sc.x[:1]).values()) / cost.FORWARD  # one full fwd + bwd
    settings = unlearn.SecondOrder(curvature="gauss-newton", hessian_rows=args.hessian_rows, seed=args.seed)
    # The H every solve is handed: the same fixed subsample second_order draws (same seed, same generator use).
    h = Curvature(head, objective, space, data, kind="gauss-newton", rows=args.hessian_rows,
                  generator=torch.Generator().manual_seed(args.seed), batch_size=len(feats))

    def median_build(build):
        times, made = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            made = build()
            times.append(time.perf_counter() - t)
        return made, statistics.median(times)

    kfac, kfac_s = median_build(lambda: Kfac.build(head, objective, data, batch_size=len(feats)))
    ekfac, ekfac_s = median_build(lambda: Kfac.build(head, objective, data, eigenvalues="ekfac",
                                                     batch_size=len(feats)))
    nys, nys_s = median_build(lambda: Nystrom(h, space.dim, args.rank, damping=d,
                                              generator=torch.Generator().manual_seed(args.seed)))
    # One-off pass equivalents: K-FAC's MACs (head forward, 10 backward vectors, factor products, eigh);
    # Nyström's rank HVPs over the H rows at the head's share, plus its QR/Cholesky/SVD (≈ 3·P·r² MACs).
    once = {"kfac": kfac.cost.macs / pass_macs, "ekfac": ekfac.cost.macs / pass_macs,
            "nystrom": cost.passes(hvps=nys.hvp_evals, share=share) + 3 * space.dim * args.rank ** 2 / pass_macs}
    seconds_once = {"kfac": kfac_s, "ekfac": ekfac_s, "nystrom": nys_s}
    solvers = {
        "plain CG": (CG(damping=d, tol=args.tol, max_iter=args.max_iter), None, 0.0),
        "K-FAC PCG": (CG(damping=d, tol=args.tol, max_iter=args.max_iter, preconditioner=kfac.preconditioner(d)),
                      "kfac", kfac.solve_macs),
        "EK-FAC PCG": (CG(damping=d, tol=args.tol, max_iter=args.max_iter,
                          preconditioner=ekfac.preconditioner(d)), "ekfac", ekfac.solve_macs),
        f"Nyström PCG (r={args.rank})": (CG(damping=d, tol=args.tol, max_iter=args.max_iter, preconditioner=nys),
                                         "nystrom", 2.0 * space.dim * args.rank),
        "K-FAC direct": (KfacSolver(kfac, d), "kfac", kfac.solve_macs),
        "EK-FAC direct": (KfacSolver(ekfac, d), "ekfac", ekfac.solve_macs),
    }
    print(f"MNIST CNN head ({' → '.join(n for n, _ in head.named_children())}, {space.dim} parameters), {len(sc.x)} images, {len(sc.rows)} flipped "
          f"labels; Gauss-Newton H on {args.hessian_rows} rows, damping {d:g}, CG tolerance {args.tol:g}; one thread")
    print(f"clean {100 * sc.clean_acc:.2f} %, poisoned {100 * sc.poisoned_acc:.2f} %; the head's inputs (one body "
          f"forward of every image, common to all solvers, once per model): {body_seconds:.2f} s, "
          f"{cost.passes(forwards=len(sc.x), forward_share=1 - share):.3g} passes; head share of a pass {share:.4f}")
    print(f"one-off: K-FAC build {kfac_s:.3f} s (form factors {kfac.cost.hessian_seconds:.3f} s, eigh "
          f"{kfac.cost.factor_seconds:.3f} s) = {once['kfac']:.3g} passes; EK-FAC {ekfac_s:.3f} s = "
          f"{once['ekfac']:.3g} passes; Nyström rank {args.rank} {nys_s:.3f} s ({nys.hvps} HVPs over "
          f"{args.hessian_rows} rows) = {once['nystrom']:.3g} passes  (medians of {args.repeats})")
    rows = {}
    for name, (solver, pre, macs_per_apply) in solvers.items():
        def update(s=solver):
            return unlearn.second_order(head, objective, request, data, solver=s, settings=settings,
                                        batch_size=len(feats))
        new, result = update()  # also warms torch.func up
        seconds = cost.median_seconds(update, args.repeats)
        stats = result.solves[0]
        applies = stats.iterations + 1 if isinstance(solver, CG) and pre else (1 if pre else 0)
        delta = space.flat(head) - space.flat(new)
        passes = (cost.passes(gradients=request.grad_evals, hvps=result.hvp_evals, share=share)
                  + applies * macs_per_apply / pass_macs)
        row = _score(sc, new)
        rows[name] = dict(iterations=stats.iterations, converged=stats.converged, hvps=stats.hvps,
                          seconds=seconds, passes=passes, residual=stats.residual, restored=row["restored"],
                          accuracy=row["accuracy"], delta=delta, pre=pre)
    reference = rows["plain CG"]
    print(f"{'solver':22s} {'iter.':>6s} {'HVPs':>5s} {'s/request':>10s} {'passes/request':>15s} {'residual':>9s} "
          f"{'restored %':>10s} {'acc %':>6s} {'‖δ−δ_CG‖/‖δ_CG‖':>16s} {'break-even vs CG (passes, s)':>29s}")
    for name, r in rows.items():
        gap = float((r["delta"] - reference["delta"]).norm() / reference["delta"].norm())
        if r["pre"] is None:
            amortized = "-"
        else:
            by_passes = break_even(once[r["pre"]], r["passes"], reference["passes"])
            by_seconds = break_even(seconds_once[r["pre"]], r["seconds"], reference["seconds"])
            amortized = f"{by_passes if by_passes is not None else 'never'}, " \
                        f"{by_seconds if by_seconds is not None else 'never'}"
        print(f"{name:22s} {r['iterations']:6d} {r['hvps']:5d} {r['seconds']:10.4f} {r['passes']:15.4g} "
              f"{r['residual']:9.1e} {r['restored']:10.1f} {100 * r['accuracy']:6.2f} {gap:16.2e} {amortized:>29s}"
              + ("" if r["converged"] else "  (not converged)"))
    # Sensitivity: a gentler preconditioner (its own damping μ ≥ d) and the direct solve at other dampings.
    b = gradient_difference(head, objective, space, request.z, request.z_tilde, batch_size=len(feats))
    for label, fac in (("K-FAC", kfac), ("EK-FAC", ekfac)):
        its = {f * d: CG(damping=d, tol=args.tol, max_iter=args.max_iter,
                         preconditioner=fac.preconditioner(f * d)).solve(h, b)[1].iterations for f in args.sweep}
        print(f"{label} PCG iterations by the preconditioner's damping μ (CG's stays {d:g}; plain CG "
              f"{reference['iterations']}): " + ", ".join(f"μ={mu:g}: {it}" for mu, it in its.items()))
    for label, fac in (("K-FAC", kfac), ("EK-FAC", ekfac)):
        sweep = []
        for f in args.sweep:
            new, result = unlearn.second_order(head, objective, request, data, solver=KfacSolver(fac, f * d),
                                               settings=settings, batch_size=len(feats))
            sweep.append(_score(sc, new) | {"damping": f * d, "solver_residual": result.solves[0].residual})
        best = max(sweep, key=lambda r: r["val_accuracy"])  # chosen without the test set
        print(f"{label} direct, % restored by damping: " + ", ".join(
            f"{r['damping']:g}: {r['restored']:.1f} (residual {r['solver_residual']:.1e})" for r in sweep)
              + f"; chosen on validation: {best['damping']:g} -> {best['restored']:.1f} % "
              f"(plain CG at {d:g}: {reference['restored']:.1f} %)")
    if args.block_diagonal:
        start = time.perf_counter()
        dense = h.dense().double()
        chol = [(layer.positions.reshape(-1), torch.linalg.cholesky(
            dense[layer.positions.reshape(-1)][:, layer.positions.reshape(-1)]
            + d * torch.eye(layer.positions.numel(), dtype=torch.float64))) for layer in kfac.layers]

        def blocks(r):
            out = torch.empty_like(r, dtype=torch.float64)
            for pos, factor in chol:
                out[pos] = torch.cholesky_solve(r[pos].double()[:, None], factor)[:, 0]
            return out.to(r)

        exact = CG(damping=d, tol=args.tol, max_iter=args.max_iter, preconditioner=blocks).solve(h, b)[1]
        block_err = {layer.name: float((layer.block() - dense[p][:, p]).norm() / dense[p][:, p].norm())
                     for layer in kfac.layers for p in [layer.positions.reshape(-1)]}
        new, result = unlearn.second_order(head, objective, request, data, solver=_Apply(blocks, d),
                                           settings=settings, batch_size=len(feats))
        row = _score(sc, new) | {"solver_residual": result.solves[0].residual}
        print(f"exact block-diagonal PCG (the per-layer blocks of H itself; {time.perf_counter() - start:.0f} s to "
              f"form and factorize): {exact.iterations} iterations vs plain CG {reference['iterations']}; as a direct "
              f"solve: % restored {row['restored']:.1f}, residual {row['solver_residual']:.1e} (K-FAC direct: "
              f"{rows['K-FAC direct']['restored']:.1f}); K-FAC's relative Frobenius error per block: "
              + ", ".join(f"{k} {v:.2f}" for k, v in block_err.items()))
    print("targets: preconditioned CG needs fewer iterations than plain CG; a finite break-even count")
    for name in (n for n in rows if "PCG" in n):
        fewer = rows[name]["iterations"] < reference["iterations"]
        print(f"  {name}: {rows[name]['iterations']} vs {reference['iterations']} iterations "
              f"(plain/PCG {reference['iterations'] / max(rows[name]['iterations'], 1):.2f}x) — "
              f"{'holds' if fewer else 'does not hold'}")


if __name__ == "__main__":
    main()
