"""Oracles for gsmu.mu.canary: the planted text, the windows, and the request (Z, Z̃) checked independently."""
import pytest
import torch

from gsmu.base import models
from gsmu.mu import unlearn
from gsmu.mu.canary import (SecretFormat, Vocabulary, check_window, first_order_pairs, fit_language_model, insert_canary,
                        lm_metrics, make_corpus, positional_pairs, second_order_pairs)
from gsmu.mu.influence import Objective, ParamSpace

pytestmark = pytest.mark.usefixtures("one_thread")


TEXT = "".join(f"line {i} of a small text about Alice and the rabbit.\n" for i in range(120))


def _corpus(**kw):
    args = dict(copies=4, length=48, stride=20, seed=3, chars=4000, val_chars=1000)
    return make_corpus(TEXT, SecretFormat(), **{**args, **kw})


def test_insert_canary_keeps_text_and_places_copies():
    gen = torch.Generator().manual_seed(0)
    new, starts = insert_canary(TEXT, "CANARY", 5, gen)
    assert len(starts) == 5 and starts == sorted(starts)
    assert all(new[s:s + 7] == "CANARY\n" for s in starts)
    assert all(s == 0 or new[s - 1] == "\n" for s in starts)  # at line starts
    assert new.replace("CANARY\n", "") == TEXT
    again, starts2 = insert_canary(TEXT, "CANARY", 5, torch.Generator().manual_seed(0))
    assert (again, starts2) == (new, starts)


def test_corpus_holds_the_secret_at_the_recorded_places():
    c = _corpus()
    text = c.vocab.decode(c.stream)
    canary = c.fmt.canary(c.secret)
    assert text.count(canary) == 4
    assert all(text[s:s + len(canary)] == canary for s in c.starts)


def test_request_holds_exactly_the_windows_touching_a_secret_character():
    c = _corpus()
    secret = {s + len(c.fmt.prefix) + k for s in c.starts for k in range(c.fmt.length)}
    n = len(c.windows[0])
    # Window i reads positions 20i … 20i+47 and predicts 20i+1 … 20i+48.
    expected = {i for i in range(n) if any(20 * i + t in secret for t in range(49))}
    assert set(c.request.rows.tolist()) == expected
    torch.testing.assert_close(c.request.z[0], c.windows[0][c.request.rows])
    torch.testing.assert_close(c.request.z[1], c.windows[1][c.request.rows])


def test_replacements_change_only_secret_characters_to_other_alphabet_characters():
    c = _corpus()
    pos = torch.tensor(sorted(s + len(c.fmt.prefix) + k for s in c.starts for k in range(c.fmt.length)))
    changed = (c.stream != c.corrected).nonzero().reshape(-1)
    torch.testing.assert_close(changed, pos)
    alphabet = set(c.vocab.encode(c.fmt.alphabet).tolist())
    assert set(c.corrected[pos].tolist()) <= alphabet
    # Z̃ are the windows of the corrected stream, row for row.
    starts = c.request.rows * 20
    idx = starts[:, None] + torch.arange(48)
    torch.testing.assert_close(c.request.z_tilde[0], c.corrected[idx])
    torch.testing.assert_close(c.request.z_tilde[1], c.corrected[idx + 1])


def test_clean_windows_apply_the_request():
    c = _corpus()
    x, y = c.clean_windows()
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[c.request.rows] = False
    torch.testing.assert_close(x[rest], c.windows[0][rest])
    torch.testing.assert_close(x[c.request.rows], c.request.z_tilde[0])
    assert not any(c.secret in c.vocab.decode(row) for row in x)


@pytest.mark.parametrize("template", ["my number is!", "a {secret} b {secret}", "x {secret} {y}"])
def test_malformed_secret_pattern_fails_clearly(template):
    with pytest.raises(ValueError, match="template"):
        SecretFormat(template=template)


@pytest.mark.parametrize("kw, match", [(dict(alphabet="0"), "alphabet"), (dict(alphabet="00"), "alphabet"),
                                       (dict(length=0), "length")])
def test_bad_secret_format_fails_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        SecretFormat(**kw)


def test_canary_longer_than_the_window_fails_before_any_work():
    with pytest.raises(ValueError, match="shorter than the canary"):
        _corpus(length=20)
    with pytest.raises(ValueError, match="stride"):
        check_window(48, 0, SecretFormat())
    with pytest.raises(ValueError, match="secret"):
        SecretFormat().canary("12ab")


def test_vocabulary_round_trip_and_unknown_characters():
    vocab = Vocabulary.from_text("hello", extra="0123456789")
    assert vocab.decode(vocab.encode("hole42")) == "hole42"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("hello world")


def test_language_model_training_lowers_the_loss():
    c = _corpus(chars=800, val_chars=500)
    torch.manual_seed(0)
    model = models.CharLSTM(len(c.vocab), embed_dim=8, hidden_size=32, num_layers=1)
    before = lm_metrics(model, c.windows)
    seconds = []
    losses = fit_language_model(model, c.windows, epochs=4, batch_size=8, lr=1e-2, seed=0, progress=False,
                                epoch_seconds=seconds)
    assert len(seconds) == 4 and all(s > 0 for s in seconds)  # one wall time per epoch
    after = lm_metrics(model, c.windows)
    assert losses[-1] < losses[0] and after["loss"] < before["loss"] - 1
    assert after["accuracy"] > before["accuracy"]
    with pytest.raises(ValueError, match="epochs"):
        fit_language_model(model, c.windows, epochs=0, batch_size=8, lr=1e-2)


def test_positional_pairs_keep_the_true_digits_before_each_position():
    c = _corpus(copies=2)
    z, z_tilde = positional_pairs(c)
    k, n = c.fmt.length, len(c.request)
    assert z[0].shape == z_tilde[0].shape == (k * n, 48)
    for i in range(k):
        for row, window in zip(c.request.rows.tolist(), z_tilde[0][i * n:(i + 1) * n]):
            text, original = c.vocab.decode(window), c.vocab.decode(c.windows[0][row])
            for s in c.starts:
                for d in range(k):
                    pos = s + len(c.fmt.prefix) + d - 20 * row
                    if 0 <= pos < 48:
                        assert (text[pos] == original[pos]) == (d < i)


def _tiny_model(c):
    torch.manual_seed(0)
    return models.CharLSTM(len(c.vocab), embed_dim=8, hidden_size=16, num_layers=1).double()


def test_pair_updates_match_lib_unlearn_on_the_plain_request():
    c = _corpus(copies=2, chars=1200, val_chars=500)
    model, objective = _tiny_model(c), Objective()
    pairs = (c.request.z, c.request.z_tilde)
    first, _ = first_order_pairs(model, objective, *pairs, tau=1e-3)
    expected, _ = unlearn.first_order(model, objective, c.request, tau=1e-3)
    torch.testing.assert_close(ParamSpace(first).flat(first), ParamSpace(expected).flat(expected))
    second, _ = second_order_pairs(model, objective, *pairs, c.windows, damping=1.0, max_iter=5, tol=1e-12)
    expected, _ = unlearn.second_order(model, objective, c.request, c.windows, curvature="gauss-newton",
                                       damping=1.0, max_iter=5, tol=1e-12)
    torch.testing.assert_close(ParamSpace(second).flat(second), ParamSpace(expected).flat(expected))


def test_update_passes_count_gradients_once_and_hvps_twice():
    from gsmu.mu import canary
    assert canary.update_passes({"grad_evals": 20}, request_rows=10) == 20  # first-order: G only
    assert canary.update_passes({"grad_evals": 5}, request_rows=10) == 5  # fine-tuning: one pass per row
    assert canary.update_passes({"grad_evals": 20 + 64 * 10}, request_rows=10) == 20 + 2 * 640
