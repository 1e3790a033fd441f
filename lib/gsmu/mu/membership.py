"""Privacy check of unlearning by membership inference: loss-threshold attack, LiRA and an unlearning audit.

An extension beyond *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023), §6: the paper
judges an update by its fidelity (accuracy, loss difference to retraining) and its efficiency, not by what
an attacker can still tell about the forgotten rows. Here an update is audited the way privacy is audited:
a membership-inference attack scores the forgotten rows against held-out rows, once on the updated model
and once on the model retrained without those rows, and an update that leaves the attack above the
retrained model's level has not unlearned. Two attacks: the loss-threshold attack of Yeom et al. (2018,
"Privacy Risk in Machine Learning", score = −loss, made threshold-free by reading the whole ROC curve) and
the Likelihood-Ratio Attack (LiRA, Carlini et al. 2022, "Membership Inference Attacks From First
Principles"), online (shadows trained with and without each candidate; for convex models that train in well
under a second) or offline (shadows without the candidates only, e.g. CNNs trained once per target). Every
attack reports its ROC AUC and its TPR at low FPRs (`AttackResult`), the figures Carlini et al. argue matter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor, nn

from ..base.runtime import check_choice, check_int, check_range, device_of

Batch = tuple[Tensor, Tensor]

DEFAULT_FPRS = (0.001, 0.01, 0.1)
LOSSES = ("auto", "binary", "multiclass")
# p clipped to [1e-12, 1 − 1e-12] before the logit: φ = log(p/(1−p)) then lies in ±_PHI_MAX.
_P_CLIP = 1e-12
_PHI_MAX = math.log((1 - _P_CLIP) / _P_CLIP)
# Floor of a Gaussian's σ in LiRA: a memorized row can sit at the clip on every shadow model (σ = 0).
_MIN_STD = 1e-6


# --------------------------------------------------------------------------------------------------------
# ROC summary


@dataclass
class AttackResult:
    """One attack's success: ROC AUC (0.5 = guessing) and TPR at each chosen FPR, over so many rows."""
    auc: float
    tpr_at_fpr: dict[float, float]
    n_members: int
    n_nonmembers: int

    def summary(self) -> str:
        tprs = ", ".join(f"TPR@{fpr:g}={tpr:.3f}" for fpr, tpr in self.tpr_at_fpr.items())
        return f"AUC={self.auc:.3f}, {tprs} ({self.n_members} members vs {self.n_nonmembers} non-members)"


def _scores(name: str, values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of scores; got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} non-finite values (NaN or ±inf).")
    return array


def _check_fprs(fprs: Sequence[float]) -> tuple[float, ...]:
    fprs = tuple(float(f) for f in fprs)
    if not fprs:
        raise ValueError("fprs must not be empty: give at least one false-positive rate.")
    for fpr in fprs:
        # FPR 0 or 1 says nothing: TPR at FPR 1 is always 1, and FPR 0 depends only on the top score.
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fprs contains {fpr!r}; every false-positive rate must lie in (0, 1).")
    return fprs


def roc_summary(member_scores: Any, nonmember_scores: Any,
                fprs: Sequence[float] = DEFAULT_FPRS) -> AttackResult:
    """AUC and TPR at each FPR of an attack whose higher score means "member".

    TPR at FPR f is the largest TPR among the ROC points whose FPR is at most f (the best threshold that
    keeps the false-positive rate within f); ties between scores count half in the AUC, as usual."""
    members = _scores("member_scores", member_scores)
    nonmembers = _scores("nonmember_scores", nonmember_scores)
    fprs = _check_fprs(fprs)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    scores = np.concatenate([members, nonmembers])
    # drop_intermediate=False keeps every threshold, so no corner of the staircase can be missed.
    fpr_curve, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    tpr_at = {f: float(tpr_curve[fpr_curve <= f].max()) for f in fprs}  # (0, 0) is always on the curve
    return AttackResult(float(roc_auc_score(labels, scores)), tpr_at, len(members), len(nonmembers))


# --------------------------------------------------------------------------------------------------------
# Per-example losses and confidences


def _check_batch(name: str, data: Batch) -> Batch:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{name} must be a pair (x, y) of tensors.")
    x, y = (torch.as_tensor(v) for v in data)
    if len(x) == 0:
        raise ValueError(f"{name} must not be empty: x has no rows.")
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} rows but y has {len(y)}; they must match.")
    return x, y.reshape(-1)


def _outputs(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    device = device_of(model)
    dtype = next(model.parameters()).dtype
    chunks = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            # Float inputs follow the model's dtype (the tabular logistic regressions are float64);
            # integer inputs (token ids) stay as they are.
            chunks.append(model(xb.to(dtype) if xb.is_floating_point() else xb).detach())
    return torch.cat(chunks)


def _kind(out: Tensor, loss: str) -> str:
    check_choice("loss", loss, LOSSES)
    if out.ndim not in (1, 2):
        raise ValueError(f"model outputs have shape {tuple(out.shape)}; expected (n,), (n, 1) or (n, C) "
                         "(one logit per row, or one per class).")
    single = out.ndim == 1 or out.shape[1] == 1
    kind = ("binary" if single else "multiclass") if loss == "auto" else loss
    if kind == "multiclass" and single:
        raise ValueError("loss='multiclass' needs one output per class, but the model gives one logit per row.")
    if kind == "binary" and not single:
        raise ValueError(f"loss='binary' needs one logit per row, but the model gives {out.shape[1]} outputs.")
    return kind


def _labels(y: Tensor, kind: str, n_classes: int) -> Tensor:
    high = 1 if kind == "binary" else n_classes - 1
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("y must hold class labels (whole numbers).")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > high):
        raise ValueError(f"y has labels in [{int(y.min())}, {int(y.max())}]; the model's {kind} outputs "
                         f"need labels in [0, {high}].")
    return y.long()


def _logits_and_labels(model: nn.Module, x: Tensor, y: Tensor, loss: str,
                       batch_size: int) -> tuple[Tensor, Tensor, str]:
    if len(x) == 0:
        raise ValueError("x must not be empty: give at least one row.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}; they must match.")
    out = _outputs(model, x, batch_size)
    kind = _kind(out, loss)
    if kind == "binary":
        out = out.reshape(-1)
    return out, _labels(y.reshape(-1).to(out.device), kind, out.shape[-1]), kind


def per_example_loss(model: nn.Module, x: Tensor, y: Tensor, loss: str = "auto", *,
                     batch_size: int = 4096) -> Tensor:
    """Per-row loss (CPU tensor, the model's dtype) without gradients: "binary" — one logit per row (shape
    (n,) as `models.LogisticRegression` gives for two classes, or (n, 1)) and y in {0, 1}, logistic loss;
    "multiclass" — one logit per class, cross-entropy; "auto" picks by the output's shape. The model is used
    in its current mode (call `.eval()` first for dropout/BatchNorm)."""
    out, labels, kind = _logits_and_labels(model, torch.as_tensor(x), torch.as_tensor(y), loss, batch_size)
    if kind == "binary":
        losses = F.binary_cross_entropy_with_logits(out, labels.to(out.dtype), reduction="none")
    else:
        losses = F.cross_entropy(out, labels, reduction="none")
    return losses.cpu()


def _logit_confidence(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> np.ndarray:
    """φ = log(p / (1 − p)) of the true label, p clipped to [1e-12, 1 − 1e-12] (LiRA's statistic).

    Computed in log space — log p_y − log Σ_{j≠y} p_j, which is ±logit for a single-logit model — and then
    clipped to ±logit(1 − 1e-12), the same as clipping p but without p rounding to 1 first."""
    out, labels, kind = _logits_and_labels(model, x, y, "auto", batch_size)
    out = out.double()
    if kind == "binary":
        phi = torch.where(labels == 1, out, -out)
    else:
        log_p = out.log_softmax(-1)
        true = log_p.gather(1, labels[:, None]).squeeze(1)
        others = log_p.scatter(1, labels[:, None], -math.inf).logsumexp(1)
        phi = true - others
    return phi.clamp(-_PHI_MAX, _PHI_MAX).cpu().numpy()


# --------------------------------------------------------------------------------------------------------
# Attacks


def loss_attack(model: nn.Module, members: Batch, nonmembers: Batch,
                fprs: Sequence[float] = DEFAULT_FPRS) -> AttackResult:
    """Loss-threshold attack (Yeom et al. 2018): score = −loss, so a row the model fits unusually well is
    called a member; every threshold is tried at once through the ROC curve."""
    members = _check_batch("members", members)
    nonmembers = _check_batch("nonmembers", nonmembers)
    fprs = _check_fprs(fprs)
    return roc_summary(-per_example_loss(model, *members), -per_example_loss(model, *nonmembers), fprs)


def _shadow_design(n_shadow: int, n_population: int, n_candidates: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(population rows, candidate IN mask) per shadow model.

    Population: a random half per shadow. Candidates: each candidate is IN for exactly ⌊n_shadow/2⌋ shadow
    models chosen at random (the design of Carlini et al.'s code), so each shadow sees about half of the
    candidates and — as n_shadow >= 2 — every candidate has at least one IN and one OUT value."""
    population = np.stack([rng.permutation(n_population)[:n_population // 2] for _ in range(n_shadow)])
    keep = rng.random((n_shadow, n_candidates)).argsort(axis=0) < n_shadow // 2
    return population, keep


def _gaussian_scores(phi: np.ndarray, keep: np.ndarray, target: np.ndarray) -> np.ndarray:
    """log N(φ_target; μ_in, σ_in) − log N(φ_target; μ_out, σ_out) per candidate (columns of `phi`)."""
    def fit(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = mask.sum(0)
        mean = np.where(mask, phi, 0.0).sum(0) / count
        var = np.where(mask, (phi - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
        # LiRA's fixed-variance variant where a candidate has too few values for its own variance: the
        # spread of all values on that side, over every candidate.
        std = np.where(count >= 2, np.sqrt(var), np.std(phi[mask]))
        return mean, np.maximum(std, _MIN_STD)

    def log_normal(value: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return -0.5 * ((value - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)

    (mu_out, sd_out) = fit(~keep)
    if not keep.any():  # offline LiRA: a one-sided test against the OUT Gaussian alone (Carlini et al. 2022, §VI-C)
        return (target - mu_out) / sd_out  # monotone in its p-value, so the ROC is the same
    mu_in, sd_in = fit(keep)
    return log_normal(target, mu_in, sd_in) - log_normal(target, mu_out, sd_out)


def _pooled(candidates_in: Batch, candidates_out: Batch) -> Batch:
    """LiRA's candidates: `candidates_in` (the members) followed by `candidates_out`, in the former's dtypes."""
    if tuple(candidates_in[0].shape[1:]) != tuple(candidates_out[0].shape[1:]):
        raise ValueError(f"candidates_out rows have shape {tuple(candidates_out[0].shape[1:])}; candidates_in rows "
                         f"have {tuple(candidates_in[0].shape[1:])}.")
    return (torch.cat([candidates_in[0], candidates_out[0].to(candidates_in[0].dtype)]),
            torch.cat([candidates_in[1], candidates_out[1].to(candidates_in[1].dtype)]))


@dataclass
class Lira:
    """Online LiRA (Carlini et al. 2022) with its shadow models trained once: `Lira.fit(...)` trains them and
    keeps the candidates' logit-scaled confidences φ on each; `attack(model)` then scores any number of target
    models on the same candidates (e.g. a model and its unlearned versions) at the cost of one forward pass."""
    phi: np.ndarray        # n_shadow × candidates: φ of each candidate's label on each shadow model
    keep: np.ndarray       # n_shadow × candidates: the candidate was IN that shadow's training data
    candidates: Batch      # candidates_in followed by candidates_out
    n_in: int
    fprs: tuple[float, ...]

    @classmethod
    def fit(cls, train_fn: Callable[[Tensor, Tensor], nn.Module], population: Batch, candidates_in: Batch,
            candidates_out: Batch, *, n_shadow: int, seed: int, fprs: Sequence[float] = DEFAULT_FPRS) -> "Lira":
        """Train `n_shadow` shadow models from `train_fn(x, y) -> model`, each on a random half of `population`
        plus about half of the candidates (`candidates_in` — the rows the target models were trained on —
        pooled with `candidates_out`). Randomness: the split comes from a numpy Generator seeded with `seed`,
        and each `train_fn` call runs under torch's global RNG seeded from it (forked, so the caller's torch
        RNG state is restored): the same seed gives the same numbers."""
        population = _check_batch("population", population)
        candidates_in = _check_batch("candidates_in", candidates_in)
        candidates_out = _check_batch("candidates_out", candidates_out)
        check_int("n_shadow", n_shadow, low=2)
        check_int("seed", seed, low=0)
        fprs = _check_fprs(fprs)
        shape = tuple(population[0].shape[1:])
        for name, (x, _) in (("candidates_in", candidates_in), ("candidates_out", candidates_out)):
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"{name} rows have shape {tuple(x.shape[1:])}; population rows have {shape}.")
        if len(population[0]) < 2:
            raise ValueError("population needs at least 2 rows: each shadow model trains on half of it.")

        cand_x, cand_y = _pooled(candidates_in, candidates_out)
        rng = np.random.default_rng(seed)
        rows, keep = _shadow_design(n_shadow, len(population[0]), len(cand_x), rng)
        shadow_seeds = rng.integers(0, 2**63 - 1, size=n_shadow)
        phi = np.empty((n_shadow, len(cand_x)))
        for k in range(n_shadow):
            idx, take = torch.from_numpy(rows[k]), torch.from_numpy(np.flatnonzero(keep[k]))
            x = torch.cat([population[0][idx], cand_x[take].to(population[0].dtype)])
            y = torch.cat([population[1][idx], cand_y[take].to(population[1].dtype)])
            with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
                torch.manual_seed(int(shadow_seeds[k]))
                shadow = train_fn(x, y)
            phi[k] = _logit_confidence(shadow, cand_x, cand_y)
        return cls(phi, keep, (cand_x, cand_y), len(candidates_in[0]), fprs)

    @classmethod
    def offline(cls, shadows: Sequence[nn.Module], candidates_in: Batch, candidates_out: Batch, *,
                fprs: Sequence[float] = DEFAULT_FPRS) -> "Lira":
        """Offline LiRA from shadow models the caller trained on data holding none of the candidates (e.g. draws
        from the target's training distribution): each candidate's OUT Gaussian only, and a one-sided test.
        Weaker than online LiRA, but the shadows need not be retrained when the candidates change, and they can
        mimic the target's training set exactly (its size, its share of poisoned labels)."""
        candidates_in = _check_batch("candidates_in", candidates_in)
        candidates_out = _check_batch("candidates_out", candidates_out)
        if len(shadows) < 2:
            raise ValueError(f"offline LiRA needs at least 2 shadow models for a Gaussian per candidate; got "
                             f"{len(shadows)}.")
        fprs = _check_fprs(fprs)
        cand_x, cand_y = _pooled(candidates_in, candidates_out)
        phi = np.stack([_logit_confidence(shadow, cand_x, cand_y) for shadow in shadows])
        return cls(phi, np.zeros_like(phi, dtype=bool), (cand_x, cand_y), len(candidates_in[0]), fprs)

    def attack(self, target_model: nn.Module) -> AttackResult:
        """Score each candidate by the log-likelihood ratio of `target_model`'s φ under Gaussians fitted to
        its IN and OUT values over the shadow models (offline: its z-score against the OUT values); members
        are `candidates_in`."""
        scores = _gaussian_scores(self.phi, self.keep, _logit_confidence(target_model, *self.candidates))
        return roc_summary(scores[:self.n_in], scores[self.n_in:], self.fprs)


def lira(target_model: nn.Module, train_fn: Callable[[Tensor, Tensor], nn.Module], population: Batch,
         candidates_in: Batch, candidates_out: Batch, *, n_shadow: int, seed: int,
         fprs: Sequence[float] = DEFAULT_FPRS) -> AttackResult:
    """Online LiRA on one target model: `Lira.fit(...).attack(target_model)` (see `Lira`)."""
    return Lira.fit(train_fn, population, candidates_in, candidates_out, n_shadow=n_shadow, seed=seed,
                    fprs=fprs).attack(target_model)


# --------------------------------------------------------------------------------------------------------
# Unlearning audit


@dataclass
class UnlearningAudit:
    """The loss attack (forgotten rows vs held-out rows) on an updated and on a retrained model.

    `excess_auc` / `excess_tpr` (at the smallest FPR) are the updated model's figures minus the retrained
    model's; `leaks` says the excess AUC exceeds `tolerance`, i.e. the update did not unlearn."""
    updated: AttackResult
    retrained: AttackResult
    excess_auc: float
    excess_tpr: float
    fpr: float
    tolerance: float
    leaks: bool

    def summary(self) -> str:
        verdict = "LEAKS" if self.leaks else "ok"
        return (f"{verdict}: excess AUC {self.excess_auc:+.3f} (tolerance {self.tolerance:g}), excess "
                f"TPR@{self.fpr:g} {self.excess_tpr:+.3f}; updated {self.updated.summary()}; "
                f"retrained {self.retrained.summary()}")


def audit_unlearning(updated_model: nn.Module, retrained_model: nn.Module, forgotten: Batch, held_out: Batch,
                     fprs: Sequence[float] = DEFAULT_FPRS, *, tolerance: float = 0.02) -> UnlearningAudit:
    """Run the loss attack with `forgotten` as members and `held_out` as non-members on both models.

    The retrained model is the reference: it never saw the forgotten rows, so whatever the attack achieves
    on it (above 0.5 when forgotten rows resemble the remaining training data) is not a leak of the update.
    `tolerance` absorbs the attack's own noise: both AUCs are estimates from finitely many rows (their
    standard error is ≈ √((n_f + n_h + 1) / (12 n_f n_h)) near 0.5, 0.02 for 400 rows a side), so an
    update is flagged only when its AUC exceeds the retrained model's by more than `tolerance`; choose it
    from the row counts at hand."""
    forgotten = _check_batch("forgotten", forgotten)
    held_out = _check_batch("held_out", held_out)
    fprs = _check_fprs(fprs)
    check_range("tolerance", tolerance, 0.0, 1.0)
    updated = loss_attack(updated_model, forgotten, held_out, fprs)
    retrained = loss_attack(retrained_model, forgotten, held_out, fprs)
    low = min(fprs)
    excess_auc = updated.auc - retrained.auc
    return UnlearningAudit(updated, retrained, excess_auc, updated.tpr_at_fpr[low] - retrained.tpr_at_fpr[low],
                           low, float(tolerance), excess_auc > tolerance)
