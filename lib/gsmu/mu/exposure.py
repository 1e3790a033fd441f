"""Exposure of a secret in a language model (Carlini et al., *The Secret Sharer*), two ways.

The metric of the canary experiment of *Machine Unlearning of Features and Labels* (Warnecke et al.,
NDSS 2023, Section 6). The log-perplexity (bits) of a secret is `−Σ_i log₂ p(s_i | prefix, context_i)`.
*Teacher-forced* (Carlini): `context_i` is the secret's own previous characters, and the canary and many
random candidates of the same format are scored by the model under test. *Greedy* (the authors' code):
`context_i` is the model's own greedy completion of the prefix, and the canary scored by the unlearned
model is compared with candidates scored by the model before unlearning. Exposure is
`log₂|R| − log₂ rank`; with `N` sampled candidates the rank estimate is `log₂(N+1) − log₂ rank` (it caps
at `log₂(N+1)`), and the skew-normal estimate `−log₂ CDF(canary)` under a `scipy.stats.skewnorm` fitted to
the candidates' log-perplexities extrapolates beyond the sample.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from ..base.runtime import device_of


def _check_tokens(prefix: Tensor, secrets: Tensor) -> None:
    if prefix.ndim != 1 or len(prefix) == 0:
        raise ValueError(f"prefix must be a non-empty 1-D token tensor; got shape {tuple(prefix.shape)}.")
    if secrets.ndim != 2 or secrets.shape[1] == 0:
        raise ValueError(f"secrets must be N×L tokens (one candidate per row); got {tuple(secrets.shape)}.")


@torch.no_grad()
def log_perplexity(model: nn.Module, prefix: Tensor, secrets: Tensor, batch_size: int = 2048) -> Tensor:
    """Teacher-forced log-perplexity in bits of each row of `secrets` (N×L tokens) after `prefix`."""
    _check_tokens(prefix, secrets)
    model.eval()
    device = device_of(model)
    p, scores = len(prefix), []
    for chunk in secrets.split(batch_size):
        seq = torch.cat([prefix.expand(len(chunk), -1), chunk], 1).to(device)
        logp = F.log_softmax(model(seq[:, :-1])[:, p - 1:], -1)
        picked = logp.gather(-1, seq[:, p:, None]).squeeze(-1)
        scores.append(-picked.sum(1).cpu() / math.log(2))
    return torch.cat(scores)


@torch.no_grad()
def greedy_completion(model: nn.Module, prefix: Tensor, length: int) -> Tensor:
    """The `length` tokens the model emits after `prefix`, always taking the most likely next token."""
    if prefix.ndim != 1 or len(prefix) == 0 or length < 1:
        raise ValueError(f"need a non-empty 1-D prefix and length >= 1; got {tuple(prefix.shape)}, {length}.")
    model.eval()
    seq = prefix.to(device_of(model))[None]
    for _ in range(length):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[0, len(prefix):].cpu()


@torch.no_grad()
def greedy_log_perplexity(model: nn.Module, prefix: Tensor, secrets: Tensor) -> Tensor:
    """The authors' variant: log-perplexity in bits of each row of `secrets`, every character scored after
    the prefix and the model's own greedy previous characters (not the secret's)."""
    _check_tokens(prefix, secrets)
    model.eval()
    greedy = greedy_completion(model, prefix, secrets.shape[1])
    seq = torch.cat([prefix, greedy[:-1]]).to(device_of(model))[None]
    logp = F.log_softmax(model(seq)[0, len(prefix) - 1:], -1).cpu()  # L × V, one row per position
    picked = logp.gather(1, secrets.T)  # L × N
    return -picked.sum(0) / math.log(2)


def random_secrets(alphabet_tokens: Tensor, length: int, n: int, generator: torch.Generator) -> Tensor:
    """`n` uniformly random candidates (n × length tokens of the alphabet)."""
    if n < 1 or length < 1:
        raise ValueError(f"n={n} and length={length} must be >= 1.")
    return alphabet_tokens[torch.randint(len(alphabet_tokens), (n, length), generator=generator)]


def all_secrets(alphabet_tokens: Tensor, length: int) -> Tensor:
    """Every candidate of the format (|alphabet|^length rows) — for small spaces only."""
    if len(alphabet_tokens) ** length > 10**6:
        raise ValueError(f"{len(alphabet_tokens)}^{length} candidates are too many to enumerate; sample them.")
    grids = torch.cartesian_prod(*[alphabet_tokens] * length)
    return grids.reshape(-1, length)


def exposure_rank(canary: float, candidates: Tensor | np.ndarray) -> float:
    """log₂(N+1) − log₂ rank, rank = 1 + #candidates with a lower log-perplexity than the canary.

    With the whole space except the canary as candidates this is Carlini's exact exposure
    `log₂|R| − log₂ rank`; with N random candidates it is an estimate that caps at log₂(N+1)."""
    candidates = np.asarray(candidates, dtype=np.float64)
    rank = 1 + int((candidates < canary).sum())
    return math.log2(len(candidates) + 1) - math.log2(rank)


def exposure_skewnorm(canary: float, candidates: Tensor | np.ndarray, space_size: int | None = None) -> float:
    """Exposure from a skew-normal fitted to the candidates' log-perplexities (Carlini et al.).

    Without `space_size`: Carlini's `−log₂ CDF(canary)`, which can exceed log₂|R| for a canary far in the
    tail. With `space_size` |R|: `log₂|R| − log₂(1 + (|R| − 1)·CDF)`, the exact formula with the canary's
    expected rank among the other |R| − 1 secrets — equal to the former inside the distribution, capped at
    log₂|R| in the tail."""
    candidates = np.asarray(candidates, dtype=np.float64)
    if len(candidates) < 10 or np.ptp(candidates) == 0:
        raise ValueError("the skew-normal fit needs at least 10 candidates with distinct log-perplexities.")
    shape, loc, scale = stats.skewnorm.fit(candidates)
    log_cdf = float(stats.skewnorm.logcdf(canary, shape, loc, scale))
    if space_size is None:
        return -log_cdf / math.log(2)
    if space_size < 2:
        raise ValueError(f"space_size={space_size} must be >= 2 (the number of possible secrets).")
    log_rank = np.logaddexp(0.0, math.log(space_size - 1) + log_cdf)
    return math.log2(space_size) - float(log_rank) / math.log(2)


def max_exposure(space_size: int, n_candidates: int | None = None) -> float:
    """The largest exposure possible: log₂|R|, or log₂(N+1) for a rank among N sampled candidates."""
    return math.log2(space_size if n_candidates is None else n_candidates + 1)
