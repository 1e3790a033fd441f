"""The canary experiment's data side: a secret planted in a text, the training windows, and the request
that replaces it, plus the character language model trained on that text.

Implements the sensitive-data experiment of *Machine Unlearning of Features and Labels* (Warnecke et al.,
NDSS 2023, Section 6, "unlearning sensitive data"), after Carlini et al.'s *The Secret Sharer*: a canary
("my telephone number is " + 10 random digits + "!") is inserted several times at seeded line starts of
*Alice's Adventures in Wonderland*; the text becomes next-character windows; the unlearning request
`(Z, Z̃)` holds exactly the windows that touch a secret character and the same windows with every secret
character replaced by another one of the secret's alphabet. `SecretFormat` describes any secret pattern,
`Vocabulary` maps characters to tokens, `fit_language_model`/`language_model`/`retrain` train a
`models.CharLSTM` (the original cached through `train.cached_model`), and `CanaryScorer` reports both exposure
definitions of `gsmu.mu.exposure` for a model. `positional_pairs` builds our request that targets every secret
position, with thin first-/second-order updates over `gsmu.mu.influence` for its repeated rows.
"""
from __future__ import annotations

import copy
import statistics
import string
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..base import models, train
from . import cost
from .influence import Curvature, Objective, ParamSpace, conjugate_gradient, gradient_difference
from .exposure import (exposure_rank, exposure_skewnorm, greedy_completion, greedy_log_perplexity, log_perplexity,
                       random_secrets)
from ..base.runtime import device_of, progress_off, get_device
from .unlearn import Request, request_from_datasets, text_windows

SLOT = "{secret}"


@dataclass(frozen=True)
class SecretFormat:
    """A secret pattern: `template` with one `{secret}` slot filled by `length` characters of `alphabet`."""

    template: str = "my telephone number is {secret}!"
    length: int = 10
    alphabet: str = string.digits

    def __post_init__(self) -> None:
        if self.template.count(SLOT) != 1:
            raise ValueError(f"template={self.template!r} must contain the slot {SLOT!r} exactly once, e.g. "
                             f"'my telephone number is {SLOT}!'.")
        if "{" in self.template.replace(SLOT, "") or "}" in self.template.replace(SLOT, ""):
            raise ValueError(f"template={self.template!r} holds braces besides the {SLOT!r} slot; remove them.")
        if self.length < 1:
            raise ValueError(f"length={self.length} must be >= 1 (characters in the secret).")
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"alphabet={self.alphabet!r} needs at least two distinct characters, each once "
                             f"(a secret character must have another one to be replaced by).")

    @property
    def prefix(self) -> str:
        return self.template.split(SLOT)[0]

    @property
    def suffix(self) -> str:
        return self.template.split(SLOT)[1]

    @property
    def space_size(self) -> int:
        """Number of possible secrets, |R| = |alphabet|^length."""
        return len(self.alphabet) ** self.length

    def canary(self, secret: str) -> str:
        """The template filled with `secret` (checked against the format)."""
        if len(secret) != self.length or any(c not in self.alphabet for c in secret):
            raise ValueError(f"secret={secret!r} must be {self.length} characters of {self.alphabet!r}.")
        return self.template.replace(SLOT, secret)

    def draw(self, generator: torch.Generator) -> str:
        """A uniformly random secret."""
        idx = torch.randint(len(self.alphabet), (self.length,), generator=generator)
        return "".join(self.alphabet[i] for i in idx.tolist())


class Vocabulary:
    """Character ↔ token map over the sorted characters of a text (plus any `extra` ones)."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, extra: str = "") -> "Vocabulary":
        return cls(text + extra)

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary; build it from a text that "
                             f"holds them (Vocabulary.from_text(text, extra=...)).")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, tokens: Tensor | Sequence[int]) -> str:
        return "".join(self.chars[int(t)] for t in tokens)


def insert_canary(text: str, canary: str, copies: int, generator: torch.Generator) -> tuple[str, list[int]]:
    """`text` with `copies` lines "canary\\n" inserted at distinct random line starts; returns the new text
    and the start offset of each copy in it (ascending)."""
    if copies < 1:
        raise ValueError(f"copies={copies} must be >= 1.")
    line_starts = [0] + [i + 1 for i, c in enumerate(text[:-1]) if c == "\n"]
    if copies > len(line_starts):
        raise ValueError(f"copies={copies} exceeds the {len(line_starts)} line starts of the text.")
    picks = sorted(line_starts[i] for i in torch.randperm(len(line_starts), generator=generator)[:copies])
    pieces, starts, last = [], [], 0
    for k, pos in enumerate(picks):
        pieces.append(text[last:pos])
        starts.append(pos + k * (len(canary) + 1))
        pieces.append(canary + "\n")
        last = pos
    pieces.append(text[last:])
    return "".join(pieces), starts


def secret_positions(starts: Sequence[int], fmt: SecretFormat) -> Tensor:
    """Token positions of every secret character: copies × length."""
    offsets = torch.arange(fmt.length) + len(fmt.prefix)
    return torch.as_tensor(list(starts), dtype=torch.long)[:, None] + offsets[None, :]


def check_window(length: int, stride: int, fmt: SecretFormat) -> None:
    """A window must be able to hold the whole canary (prefix, secret, suffix) so it can be memorized."""
    need = len(fmt.template) - len(SLOT) + fmt.length
    if length < need:
        raise ValueError(f"window length={length} is shorter than the canary ({need} characters); use "
                         f"length >= {need} or a shorter template.")
    if not (1 <= stride <= length):
        raise ValueError(f"stride={stride} must lie in [1, length={length}] so no character is skipped.")


def replace_secret(stream: Tensor, positions: Tensor, alphabet_tokens: Tensor,
                   generator: torch.Generator) -> Tensor:
    """A copy of `stream` whose tokens at `positions` are each replaced by a different random token of
    `alphabet_tokens` (so every affected window really changes)."""
    out = stream.clone()
    flat = positions.reshape(-1)
    k = len(alphabet_tokens)
    # Shift each original's alphabet index by 1..k-1 (mod k): uniform over the *other* characters.
    where = (stream[flat][:, None] == alphabet_tokens[None, :]).float().argmax(1)
    shift = torch.randint(1, k, (len(flat),), generator=generator)
    out[flat] = alphabet_tokens[(where + shift) % k]
    return out


def canary_request(stream: Tensor, positions: Tensor, alphabet_tokens: Tensor, length: int, stride: int,
                   generator: torch.Generator) -> tuple[tuple[Tensor, Tensor], Request, Tensor]:
    """Windows of `stream`, the request replacing the secret characters at `positions`, and the
    corrected stream: returns (windows, request, corrected_stream). Z is exactly the set of windows
    whose inputs or targets hold a secret character."""
    if positions.numel() == 0 or positions.min() < 0 or positions.max() >= len(stream):
        raise ValueError(f"positions must be non-empty and index the stream of {len(stream)} tokens.")
    corrected = replace_secret(stream, positions, alphabet_tokens, generator)
    windows = text_windows(stream, length, stride)
    return windows, request_from_datasets(windows, text_windows(corrected, length, stride)), corrected


@dataclass(frozen=True)
class CanaryCorpus:
    """Everything the experiment needs about the text: vocabulary, token streams, windows and request."""

    fmt: SecretFormat
    secret: str
    vocab: Vocabulary
    starts: list[int]
    stream: Tensor
    corrected: Tensor
    windows: tuple[Tensor, Tensor]
    request: Request
    validation: tuple[Tensor, Tensor]
    digest: str

    @property
    def prefix_tokens(self) -> Tensor:
        return self.vocab.encode(self.fmt.prefix)

    @property
    def secret_tokens(self) -> Tensor:
        return self.vocab.encode(self.secret)

    @property
    def alphabet_tokens(self) -> Tensor:
        return self.vocab.encode(self.fmt.alphabet)

    def clean_windows(self) -> tuple[Tensor, Tensor]:
        """The training windows with the request applied (what retraining sees)."""
        x, y = self.windows[0].clone(), self.windows[1].clone()
        x[self.request.rows], y[self.request.rows] = self.request.z_tilde
        return x, y


def make_corpus(text: str, fmt: SecretFormat, *, copies: int, length: int, stride: int, seed: int,
                chars: int, val_chars: int) -> CanaryCorpus:
    """Plant a seeded random secret `copies` times in the first `chars` characters of `text`, window the
    result, build the request that replaces every secret character, and hold out the last `val_chars`
    characters of `text` as validation windows."""
    check_window(length, stride, fmt)
    if chars <= length or val_chars <= length or chars + val_chars > len(text):
        raise ValueError(f"chars={chars} and val_chars={val_chars} must each exceed the window length="
                         f"{length} and together fit in the text ({len(text)} characters).")
    generator = torch.Generator().manual_seed(seed)
    secret = fmt.draw(generator)
    planted, starts = insert_canary(text[:chars], fmt.canary(secret), copies, generator)
    vocab = Vocabulary.from_text(text, extra=fmt.template.replace(SLOT, "") + fmt.alphabet)
    stream = vocab.encode(planted)
    validation = text_windows(vocab.encode(text[len(text) - val_chars:]), length, length)
    positions = secret_positions(starts, fmt)
    windows, request, corrected = canary_request(stream, positions, vocab.encode(fmt.alphabet), length,
                                                 stride, generator)
    digest = train.sha256_bytes(planted.encode())[:16]
    return CanaryCorpus(fmt, secret, vocab, starts, stream, corrected, windows, request, validation, digest)


def fit_language_model(model: nn.Module, windows: tuple[Tensor, Tensor], *, epochs: int, batch_size: int,
                       lr: float, clip: float = 1.0, seed: int = 0, device: str | torch.device | None = None,
                       progress: bool = True, epoch_seconds: list[float] | None = None) -> list[float]:
    """Adam on the mean next-character cross-entropy of the windows, in place; mean loss per epoch. When
    `epoch_seconds` is given, each epoch's wall time is appended to it (a timing that costs no extra run)."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}.")
    device = get_device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = windows
    losses = []
    bar = tqdm(range(epochs), desc="train LM", disable=progress_off(progress))
    for _ in bar:
        total, start = 0.0, time.perf_counter()
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            logits = model(x[idx].to(device))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].to(device).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clipping keeps the LSTM's occasional exploding gradients from derailing a short run.
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if epoch_seconds is not None:
            epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


RECIPE_KEYS = ("embed_dim", "hidden_size", "num_layers", "epochs", "batch_size", "lr")


def _split_recipe(recipe: dict) -> tuple[dict, dict]:
    missing = [k for k in RECIPE_KEYS if k not in recipe]
    if missing:
        raise ValueError(f"recipe lacks {missing}; give all of {list(RECIPE_KEYS)}.")
    return ({k: recipe[k] for k in RECIPE_KEYS[:3]}, {k: recipe[k] for k in RECIPE_KEYS[3:]})


def _build(corpus: CanaryCorpus, arch: dict, seed: int) -> models.CharLSTM:
    torch.manual_seed(seed)
    return models.CharLSTM(len(corpus.vocab), **arch)


def language_model(corpus: CanaryCorpus, recipe: dict, *, seed: int = 0, device: str | torch.device | None = None,
                   progress: bool = True) -> models.CharLSTM:
    """The CharLSTM trained with `recipe` (embed_dim, hidden_size, num_layers, epochs, batch_size, lr) on
    the corpus windows (canary included), cached by everything that determines the weights."""
    arch, fit_args = _split_recipe(recipe)
    key = {"name": "char_lstm", "text": corpus.digest, "vocab": corpus.vocab.chars,
           "windows": list(corpus.windows[0].shape), "seed": seed, **arch, **fit_args}

    def fit(model: nn.Module) -> None:
        fit_language_model(model, corpus.windows, seed=seed, device=device, progress=progress, **fit_args)

    probe = train.loss_probe(corpus.windows[0][:8], corpus.windows[1][:8])  # checked when the model is loaded
    return train.cached_model(key, lambda: _build(corpus, arch, seed), fit, device, probe=probe)


def retrain(corpus: CanaryCorpus, recipe: dict, *, seed: int = 0, device: str | torch.device | None = None,
            progress: bool = True) -> tuple[models.CharLSTM, dict]:
    """Retraining from scratch on the corrected windows (the gold standard), never cached so that its
    time is real; same recipe and seed as the original model. The record's `median_seconds` is `epochs` × the
    median epoch time of this very run (a median over the epochs instead of over repeated retrainings)."""
    arch, fit_args = _split_recipe(recipe)
    start, epochs = time.perf_counter(), []
    model = _build(corpus, arch, seed).to(get_device(device))
    fit_language_model(model, corpus.clean_windows(), seed=seed, device=device, progress=progress, epoch_seconds=epochs,
                       **fit_args)
    return model, {"method": "retraining", "seconds": time.perf_counter() - start,
                   "median_seconds": len(epochs) * statistics.median(epochs),
                   "grad_evals": fit_args["epochs"] * len(corpus.windows[0])}


@torch.no_grad()
def lm_metrics(model: nn.Module, windows: tuple[Tensor, Tensor], batch_size: int = 512) -> dict:
    """Mean next-character loss (nats) and accuracy of `model` over `windows`."""
    device = device_of(model)
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for i in range(0, len(windows[0]), batch_size):
        x, y = windows[0][i:i + batch_size].to(device), windows[1][i:i + batch_size].to(device)
        logits = model(x)
        loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    return {"loss": loss / count, "accuracy": correct / count}


def positional_pairs(corpus: CanaryCorpus) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The request targeted at every secret position: for each position i and each affected window, the
    window as it is (Z, repeated) and a copy whose secret characters from position i on are replaced
    while those before i stay true (Z̃_i). Teacher forcing asks "what follows the true first i
    characters?"; the plain request never shows that context with another continuation, this one does."""
    rows = corpus.request.rows
    z_tilde_x, z_tilde_y = [], []
    offsets = torch.arange(corpus.fmt.length) + len(corpus.fmt.prefix)
    starts = torch.as_tensor(corpus.starts)
    stride = _window_stride(corpus)
    length = corpus.windows[0].shape[1]
    for i in range(corpus.fmt.length):
        stream = corpus.stream.clone()
        late = (starts[:, None] + offsets[None, i:]).reshape(-1)
        stream[late] = corpus.corrected[late]
        idx = rows[:, None] * stride + torch.arange(length)[None, :]
        z_tilde_x.append(stream[idx])
        z_tilde_y.append(stream[idx + 1])
    z = (corpus.request.z[0].repeat(corpus.fmt.length, 1), corpus.request.z[1].repeat(corpus.fmt.length, 1))
    return z, (torch.cat(z_tilde_x), torch.cat(z_tilde_y))


def _window_stride(corpus: CanaryCorpus) -> int:
    x = corpus.windows[0]
    # Windows are consecutive slices of the stream; the stride is where the second one starts.
    for stride in range(1, x.shape[1] + 1):
        if torch.equal(corpus.stream[stride:stride + x.shape[1]], x[1]):
            return stride
    raise ValueError("the corpus windows are not strided slices of its stream.")


def first_order_pairs(model: nn.Module, objective: Objective, z: tuple[Tensor, Tensor],
                      z_tilde: tuple[Tensor, Tensor], *, tau: float, weight: float = 1.0,
                      params: Sequence[str] | None = None) -> tuple[nn.Module, dict]:
    """θ − τ·weight·G for a request given as row pairs that may repeat rows (see `second_order_pairs`)."""
    if tau <= 0 or weight <= 0:
        raise ValueError(f"tau={tau} and weight={weight} must be > 0.")
    start = time.perf_counter()
    new = copy.deepcopy(model)
    space = ParamSpace(new, params)
    g = gradient_difference(new, objective, space, z, z_tilde)
    space.assign(new, space.flat(new) - tau * weight * g)
    return new, {"method": "first-order (every position)", "seconds": time.perf_counter() - start,
                 "grad_evals": 2 * len(z[0])}


def second_order_pairs(model: nn.Module, objective: Objective, z: tuple[Tensor, Tensor],
                       z_tilde: tuple[Tensor, Tensor], data: tuple[Tensor, Tensor], *, weight: float = 1.0,
                       steps: int = 1, curvature: str = "gauss-newton", damping: float = 0.0,
                       max_iter: int = 50, tol: float = 1e-4, hessian_rows: int | None = None,
                       params: Sequence[str] | None = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """θ ← θ − (H + damping·I)⁻¹ G/steps, `steps` times, re-linearizing G and H after each step, for a
    request given as row pairs that may repeat rows (which `gsmu.mu.unlearn.Request` forbids); `weight`
    scales G (1/k for k repeats). A thin wrapper over `gsmu.mu.influence` for `positional_pairs`."""
    if steps < 1 or weight <= 0:
        raise ValueError(f"steps={steps} must be >= 1 and weight={weight} > 0.")
    start = time.perf_counter()
    new = copy.deepcopy(model)
    space = ParamSpace(new, params)
    generator = torch.Generator().manual_seed(seed)
    evals, stats = 0, []
    for _ in range(steps):
        g = gradient_difference(new, objective, space, z, z_tilde) * (weight / steps)
        h = Curvature(new, objective, space, data, kind=curvature, rows=hessian_rows, generator=generator)
        delta, info = conjugate_gradient(h, g, damping=damping, tol=tol, max_iter=max_iter)
        space.assign(new, space.flat(new) - delta)
        evals += 2 * len(z[0]) + h.evals
        stats.append(info)
    return new, {"method": "second-order (every position)", "seconds": time.perf_counter() - start,
                 "grad_evals": evals, "steps": steps, "solver": stats}


class CanaryScorer:
    """Scores a model's memory of the corpus secret both ways, against `n_candidates` random secrets.

    Carlini's exposure rescores the candidates with each model (teacher-forced); the authors' variant
    scores the canary after the model's own greedy characters against the candidates scored, the same
    way, by `reference` (the model before unlearning). Skew-normal exposures are capped at log₂|R|."""

    def __init__(self, corpus: CanaryCorpus, reference: nn.Module, n_candidates: int, seed: int):
        self.corpus = corpus
        generator = torch.Generator().manual_seed(seed)
        self.candidates = random_secrets(corpus.alphabet_tokens, corpus.fmt.length, n_candidates, generator)
        self.reference_greedy = greedy_log_perplexity(reference, corpus.prefix_tokens, self.candidates)

    def __call__(self, model: nn.Module) -> dict:
        c, space = self.corpus, self.corpus.fmt.space_size
        prefix, secret = c.prefix_tokens, c.secret_tokens[None]
        teacher = log_perplexity(model, prefix, secret)[0].item()
        candidates = log_perplexity(model, prefix, self.candidates)
        greedy = greedy_log_perplexity(model, prefix, secret)[0].item()
        completion = c.vocab.decode(greedy_completion(model, prefix, c.fmt.length))
        return {"exposure": exposure_skewnorm(teacher, candidates, space),
                "exposure_rank": exposure_rank(teacher, candidates),
                "exposure_authors": exposure_skewnorm(greedy, self.reference_greedy, space),
                "log_perplexity": teacher, "greedy_log_perplexity": greedy, "completion": completion,
                "leaks": completion == c.secret,
                "train_loss": lm_metrics(model, c.clean_windows())["loss"],
                "val_loss": lm_metrics(model, c.validation)["loss"]}



def update_passes(record: dict, request_rows: int) -> float:
    """Full-model pass equivalents (`gsmu.mu.cost`) of an update record over all of the LSTM's parameters:
    the gradients of the `request_rows` window pairs and, for second-order records, the Hessian-vector
    products (the rest of `grad_evals`)."""
    gradients = min(record["grad_evals"], 2 * request_rows)
    return cost.passes(gradients=gradients, hvps=record["grad_evals"] - gradients)
