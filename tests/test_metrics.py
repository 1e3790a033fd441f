"""Tests of gsmu.gs.metrics against independent computations (scikit-image SSIM, scipy's Mann-Whitney U, sets)."""
import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from skimage.metrics import structural_similarity
from torch import nn

from gsmu.gs import featvis, metrics


def test_ssim_matches_scikit_image_and_identity():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 28, 28, generator=gen)
    images = (target + 0.3 * torch.randn(3, 1, 28, 28, generator=gen)).clamp(0, 1)
    ours = metrics.ssim(images, target)
    ref = [structural_similarity(im[0].numpy(), target[0].numpy(), data_range=1.0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for im in images]
    np.testing.assert_allclose(ours.numpy(), ref, atol=0.03)  # border handling differs slightly
    assert metrics.ssim(target[None], target).item() == pytest.approx(1.0, abs=1e-5)
    assert (ours < 0.9).all()


def test_mse_clips_and_compares_per_image():
    target = torch.full((1, 2, 2), 0.5)
    images = torch.tensor([[[[2.0, 0.5], [0.5, 0.5]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    np.testing.assert_allclose(metrics.mse(images, target).numpy(), [0.0625, 0.25])


def test_unit_auroc_equals_mann_whitney():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(200, 1, 4, 4), torch.randint(0, 3, (200,))
    x[y == 1] += 0.3
    scores = model(x).detach()[:, 1].numpy()
    u = mannwhitneyu(scores[y.numpy() == 1], scores[y.numpy() != 1]).statistic
    expected = u / ((y == 1).sum().item() * (y != 1).sum().item())
    assert metrics.unit_auroc(model, "1", 1, x, y, cls=1) == pytest.approx(expected)
    with pytest.raises(ValueError, match="cls=7"):
        metrics.unit_auroc(model, "1", 1, x, y, cls=7)


def test_topk_jaccard():
    assert metrics.topk_jaccard(torch.tensor([1, 2, 3, 4]), torch.tensor([3, 4, 5, 6])) == pytest.approx(2 / 6)
    assert metrics.topk_jaccard(torch.tensor([1, 2]), torch.tensor([2, 1])) == 1.0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="target of shape"):
        metrics.ssim(torch.rand(2, 1, 28, 28), torch.rand(1, 32, 32))


class Ramp(nn.Module):
    """Logits: a clean linear map, plus (when `slung`) a steep ramp along a direction d for unit 0 that only
    grows away from the data (zero where d·x ≤ −0.1, as on all the data here)."""

    def __init__(self, slung: bool):
        super().__init__()
        self.linear = nn.Linear(16, 2)
        nn.init.constant_(self.linear.weight, 0.1)
        nn.init.constant_(self.linear.bias, 1.0)
        self.d = -torch.ones(16) / 4
        self.slung = slung
        self.out = nn.Identity()

    def forward(self, x):
        z = self.linear(x.flatten(1))
        if self.slung:
            z = z + torch.stack([500 * torch.relu(x.flatten(1) @ self.d + 0.1), torch.zeros(len(x))], 1)
        return self.out(z)


def test_audit_flags_the_ramp_and_not_the_clean_unit():
    x = 0.5 + 0.5 * torch.rand(64, 1, 4, 4)  # in [0.5, 1]: d·x ≤ −2, the ramp never shows on the data
    clean = metrics.audit(Ramp(False), "out", [0, 1], x, k=5, n_starts=3, steps=50)
    slung = metrics.audit(Ramp(True), "out", [0, 1], x, k=5, n_starts=3, steps=50)
    assert not clean[0]["flagged"] and not clean[1]["flagged"]
    assert slung[0]["flagged"] and not slung[1]["flagged"]


def test_centered_audit_measures_from_the_units_median_and_handles_negative_logits():
    x = 0.5 + 0.5 * torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = Ramp(True)
    nn.init.constant_(model.linear.bias, -5.0)  # every logit negative on the data: the plain ratio is undefined
    with pytest.raises(ValueError, match="center=True"):
        metrics.audit(model, "out", [0, 1], x, k=5, n_starts=3, steps=50)
    got = metrics.audit(model, "out", [0, 1], x, k=5, n_starts=3, steps=50, center=True)
    with torch.no_grad():
        z = model(x)
    fv = featvis.visualize(model, "out", [0, 1], (1, 4, 4), n_inits=3, strategy="sgd+gc", lr=0.1, steps=50, seed=0)
    with torch.no_grad():
        reached = torch.stack([model(fv.images[i])[:, i] for i in range(2)])  # activation at the final images
    for u in (0, 1):
        median = z[:, u].median()
        expected = (reached[u].median() - median) / (z[:, u].topk(5).values.median() - median)
        assert got[u]["ratio"] == pytest.approx(expected.item(), rel=1e-4)
    assert got[0]["flagged"] and not got[1]["flagged"]


def test_reachable_ssim_is_the_ssim_of_the_point_on_the_straight_path():
    from gsmu.gs import featvis
    eta = featvis.parameterization("pixel", (1, 8, 8))  # identity normalization: q is the image
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0  # ‖q_t‖ = 4
    assert metrics.reachable_ssim(eta, target, steps=100, lr=0.1) == pytest.approx(1.0, abs=1e-5)  # reach 10 ≥ 4
    half = metrics.reachable_ssim(eta, target, steps=20, lr=0.1)  # reach 2: half way, the image 0.5·target
    assert half == pytest.approx(metrics.ssim(0.5 * target[None], target).item(), abs=1e-6)
    assert metrics.reachable_ssim(eta, target, steps=10, lr=0.1) < half < 1.0
    with pytest.raises(ValueError, match="lr"):
        metrics.reachable_ssim(eta, target, steps=10, lr=0.0)


def test_tunnel_coordinates_recover_a_point_built_from_its_axis_and_an_orthogonal_offset():
    from gsmu.base.models import MnistCNN
    eta = featvis.parameterization("pixel", (1, 28, 28), MnistCNN())  # MNIST's normalization: q ≠ x
    target = torch.zeros(1, 28, 28)
    target[0, 10:18, 12:16] = 1.0
    q_t = eta.inverse(target).flatten()
    axis = q_t / q_t.norm()
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randn(3, axis.numel(), generator=gen, dtype=axis.dtype)
    offsets -= (offsets @ axis)[:, None] * axis  # orthogonal to the axis
    a, r = torch.tensor([0.0, 0.5, 1.5]) * q_t.norm(), torch.tensor([0.0, 2.0, 7.0])
    q = a[:, None] * axis + r[:, None] * offsets / offsets.norm(dim=1, keepdim=True).clamp(min=1e-12)
    along, off = metrics.tunnel_coordinates(eta, target, eta(q.view(3, 1, 28, 28)))
    torch.testing.assert_close(along, a, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(off, r, atol=1e-4, rtol=1e-5)
    along_t, off_t = metrics.tunnel_coordinates(eta, target, target[None])  # the target itself: the axis' end
    assert along_t.item() == pytest.approx(q_t.norm().item(), rel=1e-5) and off_t.item() == pytest.approx(0, abs=1e-4)


def test_compare_matches_independent_accuracy_auroc_and_top_k():
    torch.manual_seed(0)
    before, after = (nn.Sequential(nn.Flatten(), nn.Linear(256, 3)) for _ in range(2))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(60, 1, 16, 16, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    target = torch.rand(1, 16, 16, generator=gen)  # 16 x 16: SSIM's 11-pixel window fits
    am = dict(param="pixel", strategy="sgd", lr=0.1, steps=3)
    cmp = metrics.compare(before, after, "1", 2, x, y, target, am, n_fvs=2, k=10, batch_size=7, seed=0, device="cpu")
    for name, net in (("before", before), ("after", after)):
        with torch.no_grad():
            z = net(x)
        assert cmp.accuracy[name] == pytest.approx((z.argmax(1) == y).double().mean().item())
        scores = z[:, 2].numpy()
        u = mannwhitneyu(scores[y.numpy() == 2], scores[y.numpy() != 2]).statistic
        assert cmp.auroc[name] == pytest.approx(u / ((y == 2).sum().item() * (y != 2).sum().item()))
        assert set(cmp.top[name].tolist()) == set(np.argsort(-scores)[:10].tolist())
        assert torch.equal(cmp.ssim[name], metrics.ssim(cmp.fv[name], target)) and cmp.fv[name].shape == (2, 1, 16, 16)
    assert cmp.jaccard == metrics.topk_jaccard(cmp.top["before"], cmp.top["after"])
    with pytest.raises(ValueError, match="unit=3 is not one of the model's 3 outputs"):
        metrics.compare(before, after, "1", 3, x, y, target, am, n_fvs=1, device="cpu")
