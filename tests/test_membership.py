"""Oracles for gsmu.mu.membership: ROC figures counted by hand, overfit vs unseen models, retrain vs itself."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from gsmu.base.models import LogisticRegression
from gsmu.mu.influence import Objective, binary_cross_entropy_sum
from gsmu.mu.membership import (AttackResult, Lira, UnlearningAudit, _logit_confidence, audit_unlearning, lira,
                                loss_attack, per_example_loss, roc_summary)
from gsmu.mu.unlearn import fit_lbfgs

# --------------------------------------------------------------------------------------------------------
# Helpers: data with random labels in more dimensions than rows, so a logistic regression memorizes it.


def _rows(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=gen).double()
    return x, y


def _fit(x, y, l2=1e-2, max_iter=100):
    """L2-regularized logistic regression to its optimum; zero start, so no RNG is involved."""
    model = LogisticRegression(x.shape[1]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    fit_lbfgs(model, Objective(binary_cross_entropy_sum, l2=l2), (x, y), max_iter=max_iter)
    return model


def _pair_auc(members, nonmembers):
    """AUC as the share of (member, non-member) pairs ranked right, ties counting half."""
    m, n = np.asarray(members)[:, None], np.asarray(nonmembers)[None, :]
    return float(((m > n) + 0.5 * (m == n)).mean())


def _brute_tpr(members, nonmembers, fpr):
    """Largest TPR over every threshold "score >= t" whose FPR is at most `fpr` (t = +inf gives (0, 0))."""
    members, nonmembers = np.asarray(members), np.asarray(nonmembers)
    best = 0.0
    for t in np.concatenate([members, nonmembers]):
        if (nonmembers >= t).mean() <= fpr:
            best = max(best, float((members >= t).mean()))
    return best


# --------------------------------------------------------------------------------------------------------
# roc_summary


def test_perfect_separation_gives_auc_one_and_full_tpr():
    result = roc_summary([5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0])
    assert result.auc == 1.0
    assert result.tpr_at_fpr == {0.001: 1.0, 0.01: 1.0, 0.1: 1.0}
    assert (result.n_members, result.n_nonmembers) == (3, 4)
    assert "AUC=1.000" in result.summary()


def test_identical_distributions_give_auc_one_half():
    scores = [0.1, 0.4, 0.4, 0.7, 0.9]
    result = roc_summary(scores, scores, fprs=(0.1, 0.5))
    assert result.auc == 0.5
    # TPR = FPR on the diagonal: with FPR <= 0.1 no threshold admits anything; at 0.5 the top two rows pass.
    assert result.tpr_at_fpr == {0.1: 0.0, 0.5: 0.4}


def test_hand_worked_four_against_four():
    members, nonmembers = [0.9, 0.8, 0.4, 0.3], [0.7, 0.5, 0.2, 0.1]
    # Pairs ranked right: 0.9 and 0.8 beat all 4 non-members, 0.4 and 0.3 beat 2 each: 12 / 16.
    result = roc_summary(members, nonmembers, fprs=(0.1, 0.25, 0.3, 0.5, 0.9))
    assert result.auc == pytest.approx(0.75)
    # Thresholds 0.9, 0.8 (FPR 0) give TPR 1/2; 0.7 and 0.5 add false positives only (FPR 1/4, 1/2);
    # 0.4 and 0.3 then reach TPR 3/4 and 1 at FPR 1/2.
    assert result.tpr_at_fpr == {0.1: 0.5, 0.25: 0.5, 0.3: 0.5, 0.5: 1.0, 0.9: 1.0}


def test_random_scores_match_pair_counting_and_brute_force_thresholds():
    rng = np.random.default_rng(0)
    members = np.round(rng.normal(0.5, 1.0, 37), 1)  # rounded: ties between and within the groups
    nonmembers = np.round(rng.normal(0.0, 1.0, 53), 1)
    fprs = (0.02, 0.1, 0.3)
    result = roc_summary(torch.from_numpy(members), nonmembers, fprs)
    assert result.auc == pytest.approx(_pair_auc(members, nonmembers), abs=1e-12)
    for fpr in fprs:
        assert result.tpr_at_fpr[fpr] == pytest.approx(_brute_tpr(members, nonmembers, fpr), abs=1e-12)


# --------------------------------------------------------------------------------------------------------
# per_example_loss


def test_per_example_loss_matches_closed_forms():
    x, y = _rows(6, 3, seed=1)
    binary = LogisticRegression(3).double()
    z = binary(x).detach()
    expected = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z)))
    torch.testing.assert_close(per_example_loss(binary, x, y), expected)
    torch.testing.assert_close(per_example_loss(binary, x.float(), y.long(), loss="binary"), expected)

    column = nn.Linear(3, 1).double()  # (n, 1) outputs are a single logit as well
    zc = column(x).detach().squeeze(1)
    torch.testing.assert_close(per_example_loss(column, x, y),
                               -(y * torch.log(torch.sigmoid(zc)) + (1 - y) * torch.log(1 - torch.sigmoid(zc))))

    multi = nn.Linear(3, 4).double()
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    logits = multi(x).detach()
    expected = -torch.log(torch.exp(logits[torch.arange(6), labels]) / torch.exp(logits).sum(1))
    torch.testing.assert_close(per_example_loss(multi, x, labels), expected)


# --------------------------------------------------------------------------------------------------------
# Loss attack


def test_loss_attack_detects_an_overfit_model_and_not_an_unseen_one():
    members, fresh, other = _rows(40, 200, seed=2), _rows(100, 200, seed=3), _rows(40, 200, seed=4)
    overfit = _fit(*members)
    assert per_example_loss(overfit, *members).max() < 0.2  # it memorized the random labels
    result = loss_attack(overfit, members, fresh)
    assert result.auc > 0.8
    assert isinstance(result, AttackResult) and result.n_members == 40 and result.n_nonmembers == 100

    # A model trained on neither set: both are fresh to it, so the attack is a coin toss.
    unseen = _fit(*other)
    held = _rows(100, 200, seed=5)
    assert abs(loss_attack(unseen, fresh, held).auc - 0.5) < 0.15


# --------------------------------------------------------------------------------------------------------
# LiRA


def test_logit_confidence_is_the_clipped_logit_of_the_true_label():
    x, y = _rows(6, 3, seed=13)
    binary = LogisticRegression(3).double()
    with torch.no_grad():
        binary.linear.weight.mul_(100.0)  # some rows far past the clip at p = 1 − 1e-12
    p = torch.sigmoid(binary(x).detach())
    p = torch.where(y == 1, p, 1 - p).clamp(1e-12, 1 - 1e-12)
    np.testing.assert_allclose(_logit_confidence(binary, x, y), torch.log(p / (1 - p)).numpy(), rtol=1e-6)

    multi = nn.Linear(3, 4).double()
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    p = torch.softmax(multi(x).detach(), 1)[torch.arange(6), labels]
    np.testing.assert_allclose(_logit_confidence(multi, x, labels), torch.log(p / (1 - p)).numpy(), rtol=1e-9)


@pytest.fixture(scope="module")
def lira_setup():
    population, members, nonmembers = _rows(40, 60, seed=6), _rows(16, 60, seed=7), _rows(16, 60, seed=8)
    target = _fit(torch.cat([members[0], population[0][:20]]), torch.cat([members[1], population[1][:20]]))
    return target, population, members, nonmembers


def _train(x, y):
    return _fit(x, y, max_iter=50)


def test_lira_finds_members_of_an_overfit_model(lira_setup):
    target, population, members, nonmembers = lira_setup
    result = lira(target, _train, population, members, nonmembers, n_shadow=8, seed=0)
    assert result.auc > 0.75
    assert (result.n_members, result.n_nonmembers) == (16, 16)


def test_lira_is_reproducible_from_its_seed(lira_setup):
    target, population, members, nonmembers = lira_setup
    state = torch.get_rng_state()
    first = lira(target, _train, population, members, nonmembers, n_shadow=4, seed=3)
    second = lira(target, _train, population, members, nonmembers, n_shadow=4, seed=3)
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)  # the caller's torch RNG is left as it was


def test_lira_fitted_once_scores_several_models_as_separate_runs(lira_setup):
    target, population, members, nonmembers = lira_setup
    calls = []

    def counted(x, y):
        calls.append(len(x))
        return _train(x, y)
    attack = Lira.fit(counted, population, members, nonmembers, n_shadow=4, seed=3)
    never = _fit(population[0], population[1])  # trained without the candidates: no member signal of its own
    assert len(calls) == 4  # the shadows are trained once, for every target scored below
    for model in (target, never):
        assert attack.attack(model) == lira(model, _train, population, members, nonmembers, n_shadow=4, seed=3)
    assert attack.attack(target).auc > attack.attack(never).auc


@pytest.fixture(scope="module")
def offline_setup():
    # Shadows on draws from the population alone; candidates 60 a side (the AUC's standard error ≈ 0.053).
    population, members, nonmembers = _rows(200, 60, seed=16), _rows(60, 60, seed=17), _rows(60, 60, seed=18)
    shadows = [_train(population[0][idx], population[1][idx])
               for idx in (torch.randperm(200, generator=torch.Generator().manual_seed(k))[:60] for k in range(6))]
    return population, members, nonmembers, shadows


def test_offline_lira_scores_each_candidate_by_its_z_score_against_the_shadows(offline_setup):
    population, members, nonmembers, shadows = offline_setup
    target = _fit(torch.cat([members[0], population[0][:20]]), torch.cat([members[1], population[1][:20]]))
    x, y = torch.cat([members[0], nonmembers[0]]), torch.cat([members[1], nonmembers[1]])

    def phi(model):  # independent: the label's probability, logit-scaled
        p = torch.sigmoid(model(x).detach().reshape(-1))
        p = torch.where(y == 1, p, 1 - p).clamp(1e-12, 1 - 1e-12)
        return torch.log(p / (1 - p)).numpy()
    out = np.stack([phi(m) for m in shadows])
    z = (phi(target) - out.mean(0)) / out.std(0, ddof=1)
    result = Lira.offline(shadows, members, nonmembers).attack(target)
    assert result.auc == pytest.approx(_pair_auc(z[:60], z[60:]), abs=1e-12)
    assert result.auc > 0.6  # the target was trained on the members: about 3.4 standard errors above chance


def test_offline_lira_on_a_model_trained_without_the_candidates_is_near_chance(offline_setup):
    population, members, nonmembers, shadows = offline_setup
    never = _fit(population[0][100:], population[1][100:])
    assert abs(Lira.offline(shadows, members, nonmembers).attack(never).auc - 0.5) < 0.16  # 3 standard errors


def test_offline_lira_needs_two_shadows(offline_setup):
    _, members, nonmembers, shadows = offline_setup
    with pytest.raises(ValueError, match="at least 2 shadow"):
        Lira.offline(shadows[:1], members, nonmembers)


# --------------------------------------------------------------------------------------------------------
# Unlearning audit


def test_audit_flags_a_model_that_still_holds_the_forgotten_rows():
    kept, forgotten, held_out = _rows(40, 200, seed=9), _rows(30, 200, seed=10), _rows(60, 200, seed=11)
    original = _fit(torch.cat([kept[0], forgotten[0]]), torch.cat([kept[1], forgotten[1]]))
    retrained = _fit(*kept)
    audit = audit_unlearning(original, retrained, forgotten, held_out)
    assert isinstance(audit, UnlearningAudit)
    assert audit.excess_auc > 0.3 and audit.leaks
    assert audit.excess_auc == pytest.approx(audit.updated.auc - audit.retrained.auc)
    assert audit.fpr == 0.001
    assert "LEAKS" in audit.summary()

    same = audit_unlearning(retrained, retrained, forgotten, held_out)
    assert same.excess_auc == 0.0 and same.excess_tpr == 0.0 and not same.leaks


# --------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("call, name", [
    (lambda: roc_summary([], [1.0]), "member_scores"),
    (lambda: roc_summary([1.0], []), "nonmember_scores"),
    (lambda: roc_summary([[1.0, 2.0]], [1.0]), "member_scores"),
    (lambda: roc_summary([1.0, math.nan], [1.0]), "member_scores"),
    (lambda: roc_summary([1.0], [math.inf]), "nonmember_scores"),
    (lambda: roc_summary([1.0], [0.0], fprs=(0.0,)), "fprs"),
    (lambda: roc_summary([1.0], [0.0], fprs=(0.1, 1.0)), "fprs"),
    (lambda: roc_summary([1.0], [0.0], fprs=()), "fprs"),
])
def test_roc_summary_rejects_bad_inputs(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_attacks_reject_bad_inputs():
    x, y = _rows(10, 4, seed=12)
    model = LogisticRegression(4).double()
    with pytest.raises(ValueError, match="x has 10 rows but y has 9"):
        per_example_loss(model, x, y[:9])
    with pytest.raises(ValueError, match="x must not be empty"):
        per_example_loss(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="loss="):
        per_example_loss(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="loss='multiclass'"):
        per_example_loss(model, x, y, loss="multiclass")
    with pytest.raises(ValueError, match="y has labels"):
        per_example_loss(model, x, y + 1)
    with pytest.raises(ValueError, match="members: x has 10 rows but y has 9"):
        loss_attack(model, (x, y[:9]), (x, y))
    with pytest.raises(ValueError, match="nonmembers must not be empty"):
        loss_attack(model, (x, y), (x[:0], y[:0]))
    with pytest.raises(ValueError, match="fprs"):
        loss_attack(model, (x, y), (x, y), fprs=(1.0,))

    never = lambda *_: pytest.fail("no shadow model may be trained for invalid arguments")  # noqa: E731
    with pytest.raises(ValueError, match="n_shadow"):
        lira(model, never, (x, y), (x, y), (x, y), n_shadow=1, seed=0)
    with pytest.raises(ValueError, match="candidates_out"):
        lira(model, never, (x, y), (x, y), (x[:, :3], y), n_shadow=2, seed=0)
    with pytest.raises(ValueError, match="population: x has 10 rows but y has 9"):
        lira(model, never, (x, y[:9]), (x, y), (x, y), n_shadow=2, seed=0)
    with pytest.raises(ValueError, match="candidates_in must not be empty"):
        lira(model, never, (x, y), (x[:0], y[:0]), (x, y), n_shadow=2, seed=0)

    with pytest.raises(ValueError, match="forgotten: x has 10 rows but y has 9"):
        audit_unlearning(model, model, (x, y[:9]), (x, y))
    with pytest.raises(ValueError, match="tolerance"):
        audit_unlearning(model, model, (x, y), (x, y), tolerance=-0.1)


def test_offline_lira_refuses_candidates_of_different_shapes(offline_setup):
    _, members, nonmembers, shadows = offline_setup
    with pytest.raises(ValueError, match="candidates_out rows have shape"):
        Lira.offline(shadows, members, (nonmembers[0][:, :5], nonmembers[1]))
