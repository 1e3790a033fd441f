"""Oracles for gsmu.mu.exposure: exact enumeration of small secret spaces, step-by-step decoding with the
LSTM's own state, and the closed-form rank formula."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from gsmu.base import models
from gsmu.mu.canary import SecretFormat, fit_language_model, make_corpus
from gsmu.mu.exposure import (all_secrets, exposure_rank, exposure_skewnorm, greedy_completion, greedy_log_perplexity,
                          log_perplexity, max_exposure, random_secrets)

pytestmark = pytest.mark.usefixtures("one_thread")


TEXT = "".join(f"the rabbit ran past line {i % 7} and Alice followed it down.\n" for i in range(60))
FMT = SecretFormat(template="pin {secret}.", length=3, alphabet="0123")


@pytest.fixture(scope="module")
def memorized():
    c = make_corpus(TEXT, FMT, copies=12, length=24, stride=12, seed=1, chars=2400, val_chars=600)
    torch.manual_seed(0)
    model = models.CharLSTM(len(c.vocab), embed_dim=16, hidden_size=48, num_layers=1)
    # On the CPU even where CUDA is present: the oracles below feed CPU tensors to the model.
    fit_language_model(model, c.windows, epochs=30, batch_size=16, lr=1e-2, seed=0, device="cpu", progress=False)
    return c, model


def _stepwise_log_perplexity(model, prefix, secret):
    """Independent oracle: feed one token at a time, carrying the LSTM state by hand."""
    state, bits = None, 0.0
    tokens = torch.cat([prefix, secret])
    with torch.no_grad():
        for t in range(len(tokens) - 1):
            out, state = model.lstm(model.embed(tokens[t].view(1, 1)), state)
            if t >= len(prefix) - 1:
                bits -= F.log_softmax(model.head(out[0, 0]), -1)[tokens[t + 1]].item() / math.log(2)
    return bits


def test_canary_ranked_first_among_all_candidates_has_exposure_log2_of_their_count(memorized):
    c, model = memorized
    space = all_secrets(c.alphabet_tokens, FMT.length)
    assert len(space) == FMT.space_size == 64
    others = space[~(space == c.secret_tokens).all(1)]
    canary = log_perplexity(model, c.prefix_tokens, c.secret_tokens[None])[0].item()
    scores = log_perplexity(model, c.prefix_tokens, others)
    assert canary < scores.min()
    assert exposure_rank(canary, scores) == pytest.approx(math.log2(64)) == max_exposure(64)
    assert c.vocab.decode(greedy_completion(model, c.prefix_tokens, 3)) == c.secret


def test_log_perplexity_matches_stepwise_decoding(memorized):
    c, model = memorized
    secrets = random_secrets(c.alphabet_tokens, 3, 5, torch.Generator().manual_seed(0))
    batched = log_perplexity(model, c.prefix_tokens, secrets, batch_size=2)
    expected = torch.tensor([_stepwise_log_perplexity(model, c.prefix_tokens, s) for s in secrets])
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-4)


def test_greedy_variant_equals_teacher_forcing_on_the_models_own_completion(memorized):
    c, model = memorized
    greedy = greedy_completion(model, c.prefix_tokens, 3)
    # Oracle: the greedy context is the completion itself, so teacher forcing it gives the same score.
    torch.testing.assert_close(greedy_log_perplexity(model, c.prefix_tokens, greedy[None]),
                               log_perplexity(model, c.prefix_tokens, greedy[None]))
    # For any other secret the greedy variant conditions on the completion, not on the secret.
    other = torch.tensor([[greedy[0].item(), (greedy[1] + 1).item() % len(c.vocab), greedy[2].item()]])
    logp = F.log_softmax(model(torch.cat([c.prefix_tokens, greedy[:2]])[None])[0, -3:], -1)
    expected = -logp.gather(1, other.T).sum() / math.log(2)
    torch.testing.assert_close(greedy_log_perplexity(model, c.prefix_tokens, other)[0], expected)


def test_rank_exposure_formula():
    candidates = np.arange(1.0, 64.0)  # 63 others: |R| = 64
    assert exposure_rank(0.5, candidates) == pytest.approx(6.0)
    assert exposure_rank(10.5, candidates) == pytest.approx(6.0 - math.log2(11))
    assert exposure_rank(100.0, candidates) == pytest.approx(0.0)


def test_skew_normal_and_exact_exposure_agree_on_an_enumerable_space():
    torch.manual_seed(0)
    fmt = SecretFormat(template="pin {secret}.", length=4, alphabet="0123456789")
    c = make_corpus(TEXT, fmt, copies=2, length=24, stride=12, seed=0, chars=2400, val_chars=600)
    model = models.CharLSTM(len(c.vocab), embed_dim=16, hidden_size=32, num_layers=1)
    for p in model.parameters():  # a random model with a spread-out score distribution
        torch.nn.init.normal_(p, std=0.5)
    space = all_secrets(c.alphabet_tokens, 4)
    scores = log_perplexity(model, c.prefix_tokens, space).double()
    order = scores.argsort()
    # Inside the distribution the fit matches the exact exposure to 0.2 bits; in the far tail (top 0.2%)
    # it extrapolates, and agrees to a bit (a factor of two in rank).
    for rank, tol in ((20, 1.0), (200, 0.2), (2000, 0.2), (5000, 0.2)):
        canary = scores[order[rank - 1]].item()
        others = torch.cat([scores[order[:rank - 1]], scores[order[rank:]]])
        exact = exposure_rank(canary, others)
        assert exact == pytest.approx(math.log2(10**4 / rank))
        assert exposure_skewnorm(canary, others, space_size=10**4) == pytest.approx(exact, abs=tol)
        assert exposure_skewnorm(canary, others) == pytest.approx(exact, abs=tol)


def test_skew_normal_exposure_is_capped_by_the_space_size_only_when_asked():
    sample = stats.skewnorm.rvs(3.0, loc=30, scale=4, size=5000, random_state=np.random.default_rng(0))
    far = 0.0  # ~8 scales below the mode
    assert exposure_skewnorm(far, sample) > 40
    assert exposure_skewnorm(far, sample, space_size=2**20) == pytest.approx(20.0, abs=1e-6)


def test_bad_inputs_fail_clearly(memorized):
    c, model = memorized
    with pytest.raises(ValueError, match="secrets"):
        log_perplexity(model, c.prefix_tokens, c.secret_tokens)
    with pytest.raises(ValueError, match="prefix"):
        greedy_log_perplexity(model, c.prefix_tokens[None], c.secret_tokens[None])
    with pytest.raises(ValueError, match="too many"):
        all_secrets(torch.arange(10), 7)
    with pytest.raises(ValueError, match="skew-normal"):
        exposure_skewnorm(1.0, np.ones(50))
