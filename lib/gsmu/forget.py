"""Unlearn rows or features from a logistic-regression model on your own data: `python -m gsmu.forget`.

    python -m gsmu.forget --model model.pt --data train.npz --forget features:3,7 --out out/
    python -m gsmu.forget --model model.pt --data train.svm --forget rows:1,5,9 --certify 0.1,0.01 --out out/
    python -m gsmu.forget --model model.pt --data train.npz --forget "features:3,7;rows:0-9" --train --sigma 2.5 ...

Implements the closed-form updates of *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS
2023) for a convex head — L2-regularized logistic regression, the paper's certified setting (Section 5) —
through `gsmu.mu.unlearn`: the second-order update θ − H⁻¹G (default) or the first-order θ − τG.

(Named `forget`, not `unlearn`, so that `gsmu.forget` — this command — is not confused with the library
module `gsmu.mu.unlearn` it calls.)

Requests (`--forget`):
  rows:1,5,9            remove these training rows (ranges allowed: rows:0-9,12)
  features:3,7          zero these feature columns in every row where they are non-zero
  features:3,7;rows:0-9 zero the features only in those rows

Files:
  --data   .npz with arrays `X` (n×d) and `y` (n), or an svmlight/libsvm text file (.svm, .svmlight,
           .libsvm, .txt). Labels {0, 1} or {−1, +1} are binary; 0..C−1 are C classes.
  --model  a `.pt` file written by this command (`--train`) or a plain state dict of `linear.weight`
           (1×d binary, C×d multi-class) and `linear.bias`; loaded with `torch.load(weights_only=True)`.
           This command's files also carry λ (`l2`) and, for certified training, the loss perturbation b
           and its σ.

Certification (`--certify eps,delta`): the gradient residual β of the updated model on the corrected data
(with the model's loss perturbation b) and the σ that would certify it, σ = c·β/ε with c = √(2 ln(1.5/δ))
(Guo et al. 2020, the paper's Section 5). The update is certified when the model was trained with a
perturbation of that σ or more (`--train --sigma S` trains such a model). Writes `<out>/model.pt` (the
updated model, same format) and `<out>/unlearning.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base.runtime import parse_index_list

SVMLIGHT_SUFFIXES = (".svm", ".svmlight", ".libsvm", ".txt")


class ForgetError(ValueError):
    """A bad input of the forget command (the message says which option and what to do)."""


# --- parsing ------------------------------------------------------------------------------------------------

def parse_indices(text: str, what: str) -> list[int]:
    """'1,5,9' or '0-9,12' → sorted unique non-negative integers; ForgetError otherwise."""
    try:
        return parse_index_list(text)
    except ValueError as e:
        raise ForgetError(f"--forget {what}: {e}; write e.g. {what}:1,5,9 or {what}:0-9,12.") from None


def parse_forget(spec: str) -> dict[str, list[int]]:
    """'rows:1,5,9', 'features:3,7' or 'features:3,7;rows:0-9' → {'rows': [...], 'features': [...]}."""
    parsed: dict[str, list[int]] = {}
    for part in [p for p in spec.split(";") if p.strip()]:
        kind, sep, values = part.strip().partition(":")
        if not sep or kind not in ("rows", "features") or not values.strip():
            raise ForgetError(f"--forget {spec!r}: write rows:1,5,9, features:3,7 or features:3,7;rows:0-9 "
                              f"(got {part.strip()!r}).")
        if kind in parsed:
            raise ForgetError(f"--forget {spec!r}: {kind} given twice.")
        parsed[kind] = parse_indices(values, kind)
    if not parsed:
        raise ForgetError(f"--forget {spec!r} is empty: write rows:1,5,9 or features:3,7.")
    return parsed


def parse_certify(spec: str) -> tuple[float, float]:
    try:
        eps, delta = (float(v) for v in spec.split(","))
    except ValueError:
        raise ForgetError(f"--certify {spec!r}: write eps,delta, e.g. 0.1,0.01.") from None
    if not (eps > 0 and math.isfinite(eps)) or not 0 < delta < 1:
        raise ForgetError(f"--certify {spec!r}: need eps > 0 and 0 < delta < 1.")
    return eps, delta


# --- files --------------------------------------------------------------------------------------------------

def load_data(path: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(X n×d float64, y n int64 in 0..C−1, C) from an .npz (X, y) or an svmlight file."""
    file = Path(path)
    if not file.is_file():
        raise ForgetError(f"--data {path!r}: no such file.")
    if file.suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as z:
                if "X" not in z or "y" not in z:
                    raise ForgetError(f"--data {path!r}: the .npz needs arrays 'X' and 'y'; it has {list(z.keys())}.")
                X, y = np.asarray(z["X"], dtype=np.float64), np.asarray(z["y"])
        except ForgetError:
            raise
        except Exception as e:
            raise ForgetError(f"--data {path!r} cannot be read as .npz: {e}") from e
    elif file.suffix in SVMLIGHT_SUFFIXES:
        from .base.data import DataError, load_svmlight
        try:
            X, y = load_svmlight(file)
        except DataError as e:
            raise ForgetError(f"--data: {e}") from e
        X = np.asarray(X.todense(), dtype=np.float64)
    else:
        raise ForgetError(f"--data {path!r}: use an .npz file (arrays X, y) or svmlight ({', '.join(SVMLIGHT_SUFFIXES)}).")
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ForgetError(f"--data {path!r}: X must be n×d and y n labels; got X {X.shape}, y {y.shape}.")
    if not np.isfinite(X).all():
        raise ForgetError(f"--data {path!r}: X holds NaN or infinite values.")
    values = np.unique(y)
    if set(values.tolist()) <= {-1, 1} and len(values) == 2:
        y = (y > 0).astype(np.int64)
    elif np.allclose(y, np.round(y)) and values.min() >= 0:
        y = y.astype(np.int64)
    else:
        raise ForgetError(f"--data {path!r}: labels must be 0..C−1 or ±1; got values {values[:10].tolist()}.")
    classes = max(2, int(y.max()) + 1)
    return torch.from_numpy(X), torch.from_numpy(y), classes


def load_model(path: str) -> tuple[dict, dict]:
    """(state dict of linear.weight/bias, metadata: l2, sigma, perturbation) with weights_only=True."""
    file = Path(path)
    if not file.is_file():
        raise ForgetError(f"--model {path!r}: no such file (use --train to fit one on --data first).")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ForgetError(f"--model {path!r} cannot be read with torch.load(weights_only=True) "
                          f"({type(e).__name__}); save a state dict with torch.save.") from e
    meta = {}
    if isinstance(blob, dict) and "state_dict" in blob:
        meta = {k: blob[k] for k in ("l2", "sigma", "perturbation", "seed") if k in blob}
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or set(blob) != {"linear.weight", "linear.bias"}:
        keys = list(blob)[:6] if isinstance(blob, dict) else type(blob).__name__
        raise ForgetError(f"--model {path!r}: expected a logistic-regression state dict with 'linear.weight' "
                          f"and 'linear.bias'; got {keys}.")
    return blob, meta


def build(n_features: int, classes: int):
    from .base.models import LogisticRegression
    return LogisticRegression(n_features, classes).double()


def objective_for(classes: int, l2: float):
    from .mu.influence import Objective, binary_cross_entropy_sum, cross_entropy_sum
    return Objective(criterion=binary_cross_entropy_sum if classes == 2 else cross_entropy_sum, l2=l2)


def save_model(path: Path, model, l2: float, sigma: float, perturbation: torch.Tensor | None, seed: int | None):
    blob = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "l2": float(l2),
            "sigma": float(sigma)}
    if perturbation is not None:
        blob["perturbation"] = perturbation.cpu()
    if seed is not None:
        blob["seed"] = int(seed)
    torch.save(blob, path)


# --- the command --------------------------------------------------------------------------------------------

def make_request(forget: dict[str, list[int]], x: torch.Tensor, y: torch.Tensor):
    from .mu import unlearn
    n, d = x.shape
    rows, features = forget.get("rows"), forget.get("features")
    if rows is not None and rows[-1] >= n:
        raise ForgetError(f"--forget rows: row {rows[-1]} out of range; --data has {n} rows (0-{n - 1}).")
    if features is not None and features[-1] >= d:
        raise ForgetError(f"--forget features: feature {features[-1]} out of range; --data has {d} features "
                          f"(0-{d - 1}).")
    if features is None:
        return unlearn.remove_rows(x, y, rows), "remove rows"
    if rows is None:
        changed = (x[:, features] != 0).any(1)
        if not changed.any():
            raise ForgetError(f"--forget features:{features}: these features are zero in every row; nothing to unlearn.")
        return unlearn.remove_features(x, y, features), "zero features"
    changed = (x[rows][:, features] != 0).any(1)
    if not changed.any():
        raise ForgetError(f"--forget: features {features} are already zero in rows {rows}; nothing to unlearn.")
    kept = [r for r, c in zip(rows, changed.tolist()) if c]
    return unlearn.remove_features(x, y, features, rows=kept), "zero features in rows"


def run(args: argparse.Namespace) -> dict:
    from .mu import unlearn
    from .mu.influence import ParamSpace, gradient_residual
    forget = parse_forget(args.forget)
    certify = parse_certify(args.certify) if args.certify else None
    if args.method == "first-order" and args.tau is None:
        raise ForgetError("--method first-order needs --tau (the unlearning rate), e.g. --tau 1e-3.")
    if args.sigma < 0 or args.l2 is not None and not args.l2 > 0:
        raise ForgetError(f"--sigma={args.sigma} must be >= 0 and --l2 > 0 (strong convexity).")
    x, y, classes = load_data(args.data)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    if args.train:
        l2 = 1.0 if args.l2 is None else args.l2
        model = build(x.shape[1], classes)
        b = (unlearn.perturbation(ParamSpace(model).dim, args.sigma, torch.Generator().manual_seed(args.seed))
             if args.sigma > 0 else None)
        unlearn.fit_lbfgs(model, objective_for(classes, l2), (x, y), linear=b)
        sigma = args.sigma
        Path(args.model).parent.mkdir(parents=True, exist_ok=True)
        save_model(Path(args.model), model, l2, sigma, b, args.seed)
    state, meta = load_model(args.model)
    weight = state["linear.weight"]
    expected_rows = 1 if classes == 2 else classes
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ForgetError(f"shape mismatch: --model has weights of shape {tuple(weight.shape)} (features "
                          f"{weight.shape[-1]}), --data has {x.shape[1]} features.")
    if weight.shape[0] != expected_rows:
        if not (classes < weight.shape[0] and weight.shape[0] > 1):
            raise ForgetError(f"shape mismatch: --model has {weight.shape[0]} output(s), --data labels need "
                              f"{expected_rows} ({classes} classes).")
        classes = weight.shape[0]  # some classes absent from these rows
    if tuple(state["linear.bias"].shape) != (weight.shape[0],):
        raise ForgetError(f"shape mismatch: --model bias has shape {tuple(state['linear.bias'].shape)}, "
                          f"expected ({weight.shape[0]},).")
    l2 = float(meta.get("l2", 1.0 if args.l2 is None else args.l2))
    if args.l2 is not None and "l2" in meta and abs(args.l2 - l2) > 1e-12:
        raise ForgetError(f"--l2={args.l2} differs from the λ={l2} the model was trained with (stored in --model).")
    sigma = float(meta.get("sigma", 0.0))
    b = meta.get("perturbation")
    model = build(x.shape[1], classes)
    model.load_state_dict({k: v.double() for k, v in state.items()})
    if b is not None and b.shape != (ParamSpace(model).dim,):
        raise ForgetError(f"--model: its perturbation has shape {tuple(b.shape)}, expected ({ParamSpace(model).dim},).")
    objective = objective_for(classes, l2)
    request, kind = make_request(forget, x, y)
    corrected = unlearn.apply_request((x, y), request)
    start = time.perf_counter()
    if args.method == "second-order":
        new, record = unlearn.second_order(model, objective, request, (x, y), solver="exact")
    else:
        new, record = unlearn.first_order(model, objective, request, tau=args.tau)
    seconds = time.perf_counter() - start
    residual_before = gradient_residual(model, objective, corrected, linear=b)
    residual = gradient_residual(new, objective, corrected, linear=b)
    result = {
        "request": {"kind": kind, "rows": request.rows.tolist(), "n_rows": len(request),
                    "features": forget.get("features")},
        "data": {"file": str(args.data), "rows": len(x), "features": x.shape[1], "classes": classes},
        "model": {"file": str(args.model), "l2": l2, "sigma": sigma, "perturbed": b is not None},
        "method": args.method, "seconds": round(seconds, 4), "grad_evals": record["grad_evals"],
        "residual_before": residual_before, "residual": residual,
        "accuracy_corrected_before": unlearn.accuracy(model, *corrected),
        "accuracy_corrected_after": unlearn.accuracy(new, *corrected),
    }
    if certify is not None:
        eps, delta = certify
        needed = unlearn.certifying_sigma(residual, eps, delta)
        ok = sigma > 0 and b is not None and unlearn.is_certified(residual, sigma, eps, delta)
        result["certification"] = {
            "epsilon": eps, "delta": delta, "c": unlearn.certify_constant(delta), "sigma_model": sigma,
            "sigma_needed": needed, "certified": bool(ok),
            "verdict": (f"certified: residual {residual:.3g} <= sigma*eps/c with sigma={sigma:.3g}" if ok else
                        (f"not certified: the model was trained without loss perturbation; retrain with "
                         f"--train --sigma >= {needed:.3g}" if b is None else
                         f"not certified: sigma={sigma:.3g} < {needed:.3g} needed for this residual")),
        }
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", new, l2, sigma, b, meta.get("seed"))
    (out / "unlearning.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gsmu.forget", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="logistic-regression weights (.pt); written first with --train")
    p.add_argument("--data", required=True, help="training data: .npz (X, y) or svmlight")
    p.add_argument("--forget", required=True, help="rows:1,5,9 | features:3,7 | features:3,7;rows:0-9")
    p.add_argument("--method", default="second-order", choices=("second-order", "first-order"))
    p.add_argument("--tau", type=float, help="unlearning rate of --method first-order")
    p.add_argument("--certify", help="eps,delta: report the σ that certifies the update and the verdict")
    p.add_argument("--out", required=True, help="folder for model.pt and unlearning.json")
    p.add_argument("--train", action="store_true", help="first fit --model on --data (L-BFGS) and save it")
    p.add_argument("--sigma", type=float, default=0.0, help="with --train: loss-perturbation σ (certified training)")
    p.add_argument("--l2", type=float, default=None, help="λ of λ/2‖θ‖² (default 1.0, or the model file's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the loss perturbation b")
    args = p.parse_args(argv)
    # torch's forward-mode AD (the Hessian-vector products) loads its decompositions with torch.jit.script,
    # which warns about its own deprecation: noise for a user of this command
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    try:
        result = run(args)
    except ForgetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cert = result.get("certification")
    print(f"{result['request']['kind']}: {result['request']['n_rows']} row(s); residual "
          f"{result['residual_before']:.3g} -> {result['residual']:.3g}"
          + (f"; sigma needed {cert['sigma_needed']:.3g}; {cert['verdict']}" if cert else "")
          + f"; wrote {Path(args.out) / 'model.pt'} and {Path(args.out) / 'unlearning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
