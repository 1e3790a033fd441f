import numpy as np
import pytest
import torch

from gsmu.mu import features, unlearn
from gsmu.mu.profiles import NOTEBOOKS, SpamCertified, SpamFeatures


def test_scaling_keeps_zero_and_maps_the_training_maximum_to_one():
    x = np.array([[0.0, 3.0], [1.0, 0.0], [7.0, 0.0]])
    scaled = features.scale_features(x, np.array([0, 1]))
    assert scaled[0, 0] == 0 and scaled[1, 1] == 0  # zero stays zero: no centring
    assert scaled[1, 0] == pytest.approx(1.0) and scaled[0, 1] == pytest.approx(1.0)
    assert scaled[2, 0] == pytest.approx(np.log1p(7) / np.log1p(1))  # test rows may exceed 1
    with pytest.raises(ValueError, match=">= 0"):
        features.scale_features(-x, np.array([0]))


def test_spambase_setup_is_seeded_and_at_the_optimum():
    a, b, c = features.spambase(0), features.spambase(0), features.spambase(1)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) + len(a.x_test) == 4601 and len(a.donor) == 9
    from gsmu.mu.influence import gradient_residual
    assert gradient_residual(a.model, a.objective, a.train) < 1e-3  # ∇L(θ*; D) ≈ 0, as the updates assume


def test_certify_raises_sigma_until_every_draw_is_certified():
    spam = features.spambase(0)
    holders = unlearn.remove_features(*spam.train, spam.donor).rows
    request = unlearn.remove_features(*spam.train, spam.donor, rows=holders[:3])
    corrected = unlearn.apply_request(spam.train, request)
    first = lambda m: unlearn.first_order(m, spam.objective, request, tau=1e-3)[0]  # noqa: E731
    out = features.certify(spam.model, spam.objective, spam.train, corrected, first, (spam.x_test, spam.y_test),
                           sigma0=1e-6, epsilon=0.1, delta=0.01, draws=2, rounds=6, seed=0)
    assert out.sigma > out.sigma0 and out.certified_at_sigma0 < 2  # a tiny σ does not certify
    assert out.all_certified and len(out.accuracies) == 2
    with pytest.raises(ValueError, match="draws"):
        features.certify(spam.model, spam.objective, spam.train, corrected, first, (spam.x_test, spam.y_test),
                         sigma0=1.0, epsilon=0.1, delta=0.01, draws=0, rounds=1, seed=0)


def test_mu_notebooks_are_registered_with_three_seeds():
    assert set(NOTEBOOKS) == {"05_unlearning_features", "06_unlearning_certified", "07_unlearning_labels",
                              "08_unlearning_canary", "09_unlearning_authors_data", "11_unlearning_backdoor"}
    for cls in NOTEBOOKS.values():
        assert cls.grid("quick")["seed"] == [0, 1, 2]
    assert SpamFeatures.for_profile("paper").runs > SpamFeatures.for_profile("quick").runs
    assert SpamCertified.for_profile("paper").draws > SpamCertified.for_profile("quick").draws
