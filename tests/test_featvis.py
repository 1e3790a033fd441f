"""Tests of gsmu.gs.featvis against independent oracles (numpy.fft, direct indexing, one-at-a-time runs)."""
import numpy as np
import pytest
import torch
from torch import nn

from gsmu.gs import featvis
from gsmu.base.models import MnistCNN


def tiny_cnn(channels: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU()),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 5))


@pytest.mark.parametrize("shape", [(1, 12, 12), (3, 9, 14), (3, 16, 11)])
def test_fourier_round_trip_and_scale(shape):
    eta = featvis.Parameterization("fourier", shape, decay=0.8)
    x = torch.rand(2, *shape) * 0.98 + 0.01
    assert torch.allclose(eta(eta.inverse(x)), x, atol=1e-5)
    c, h, w = shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    expected = 1.0 / np.maximum(np.sqrt(fy ** 2 + fx ** 2), 1.0 / max(h, w)) ** 0.8
    np.testing.assert_allclose(featvis.fourier_scale(h, w, 0.8).numpy(), expected, rtol=1e-6)


def test_fourier_forward_matches_numpy():
    eta = featvis.Parameterization("fourier", (3, 8, 10), decay=1.0)
    q = torch.randn(1, *eta.shape)
    spectrum = (q[..., 0] + 1j * q[..., 1]).numpy()[0] * featvis.fourier_scale(8, 10).numpy()
    image = np.fft.irfft2(spectrum, s=(8, 10), norm="ortho")
    image = np.einsum("cd,dhw->chw", featvis.color_matrix().numpy(), image)
    np.testing.assert_allclose(eta(q)[0].numpy(), 1 / (1 + np.exp(-image)), atol=1e-5)
    assert featvis.color_matrix().norm(dim=0).max().item() == pytest.approx(1.0)


def test_pixel_uses_model_normalization_exactly():
    model = MnistCNN()
    eta = featvis.parameterization("pixel", (1, 28, 28), model)
    x = torch.rand(3, 1, 28, 28)
    q = eta.inverse(x)
    assert torch.allclose(model.normalize(x), q, atol=1e-6)  # q is the normalized image
    assert torch.allclose(eta(q), x, atol=1e-6)


@pytest.mark.parametrize("strategy", ["sgd", "sgd+gc", "tr", "adam", "adam+gc+tr"])
def test_optimization_raises_activation(strategy):
    model = tiny_cnn()
    lr = 0.05 if strategy.startswith("adam") else 2.0
    res = featvis.visualize(model, "4", [0, 3], (1, 12, 12), n_inits=2, strategy=strategy, lr=lr,
                            steps=30, seed=1)
    assert res.images.shape == (2, 2, 1, 12, 12) and res.trajectory.shape == (31, 2, 2)
    assert (res.trajectory[-1] > 1.3 * res.trajectory[0]).all() and (res.trajectory[0] > 0).all()


@pytest.mark.parametrize("strategy,param", [("sgd+gc", "pixel"), ("adam+gc+tr", "fourier")])
def test_batched_equals_one_at_a_time(strategy, param):
    model = tiny_cnn(channels=3)
    kw = dict(param=param, strategy=strategy, lr=0.05, steps=15)
    batched = featvis.visualize(model, "2.0", [1, 4, 2], (3, 12, 12), n_inits=3, seed=5, **kw)
    for ui, unit in enumerate([1, 4, 2]):
        for i in range(3):
            alone = featvis.visualize(model, "2.0", unit, (3, 12, 12), n_inits=1, seed=5 + i, **kw)
            torch.testing.assert_close(alone.q[0, 0], batched.q[ui, i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(alone.trajectory[:, 0, 0], batched.trajectory[:, ui, i],
                                       atol=1e-4, rtol=1e-4)


def test_conv_channel_mean_and_nested_hook_removed():
    model = tiny_cnn()
    x = torch.randn(4, 1, 12, 12)
    out = featvis.layer_output(model, "2.0", x)
    direct = model[2][0](model[1](model[0](x)))
    torch.testing.assert_close(out, direct)
    torch.testing.assert_close(featvis.unit_values(out, torch.tensor([0, 5, 2, 2])),
                               torch.stack([direct[0, 0].mean(), direct[1, 5].mean(),
                                            direct[2, 2].mean(), direct[3, 2].mean()]))
    assert not model[2][0]._forward_hooks


def test_hook_removed_when_forward_fails():
    model = tiny_cnn()
    with pytest.raises(RuntimeError):
        featvis.layer_output(model, "0", torch.zeros(1, 2, 12, 12))
    assert not model[0]._forward_hooks


def test_callable_objective():
    model = tiny_cnn()
    res = featvis.visualize(model, "4", lambda out: out[:, 0] - out[:, 1], (1, 12, 12), steps=20, lr=0.05)
    assert res.trajectory[-1, 0, 0] > res.trajectory[0, 0, 0]


@pytest.mark.parametrize("strategy,param", [("sgd+gc", "pixel"), ("adam+gc+tr", "fourier")])
def test_snapshot_equals_a_shorter_run(strategy, param):
    # one long AM run serves several budgets only if its snapshot after k steps IS the k-step run's result
    model = tiny_cnn(channels=3)
    kw = dict(param=param, strategy=strategy, lr=0.05, n_inits=3, seed=2)
    long = featvis.visualize(model, "2.0", [1, 4], (3, 12, 12), steps=11, snapshots=[4, 11], **kw)
    short = featvis.visualize(model, "2.0", [1, 4], (3, 12, 12), steps=4, **kw)
    assert set(long.snapshots) == {4, 11}
    assert torch.equal(long.snapshots[4], short.images) and torch.equal(long.snapshots[11], long.images)
    assert not torch.equal(long.snapshots[4], long.images)
    with pytest.raises(ValueError, match="snapshots"):
        featvis.visualize(model, "2.0", 1, (3, 12, 12), steps=4, snapshots=[5], **kw)


def test_clear_errors():
    model = MnistCNN()
    with pytest.raises(ValueError, match=r"fc3"):
        featvis.visualize(model, "fc_3", 0, (1, 28, 28), steps=1)
    with pytest.raises(ValueError, match="out of range"):
        featvis.visualize(model, "out", 10, (1, 28, 28), steps=1)
    with pytest.raises(ValueError, match="image_shape"):
        featvis.visualize(model, "out", 0, (1, 32, 32), steps=1)
    with pytest.raises(ValueError, match="strategy"):
        featvis.visualize(model, "out", 0, (1, 28, 28), strategy="sgd+tr")
    with pytest.raises(ValueError, match="does not match"):
        featvis.Parameterization("fourier", (3, 8, 8)).inverse(torch.rand(1, 8, 8))


def test_natural_examples_are_top_k():
    model = tiny_cnn()
    x = torch.randn(50, 1, 12, 12)
    idx, vals = featvis.natural_examples(model, "4", [2, 0], x, k=4, batch_size=7)
    with torch.no_grad():
        logits = model(x)
    for row, unit in enumerate([2, 0]):
        expected = torch.argsort(logits[:, unit], descending=True)[:4]
        assert idx[row].tolist() == expected.tolist()
        torch.testing.assert_close(vals[row], logits[expected, unit])


def test_model_left_unchanged_and_mode_restored():
    model = tiny_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    featvis.visualize(model, "4", 0, (1, 12, 12), steps=5)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_strategy_objects_compose_like_the_presets():
    """A hand-built Strategy equals its preset bit for bit; a custom transform is applied; no clip means raw steps."""
    model = tiny_cnn()
    kw = dict(n_inits=2, lr=0.05, steps=10, seed=3)
    custom = featvis.Strategy(featvis.adam, (featvis.RandomAffine(pad=2),), clip=1.0)
    torch.testing.assert_close(featvis.visualize(model, "4", [0, 3], (1, 12, 12), strategy=custom, **kw).q,
                               featvis.visualize(model, "4", [0, 3], (1, 12, 12), strategy="adam+gc+tr", **kw).q,
                               rtol=0, atol=0)
    seen = []

    def flip(x, generators):  # a transform of our own: it must see every step's batch, units × inits
        seen.append(x.shape[0])
        return x.flip(-1)
    flipped = featvis.visualize(model, "4", [0, 3], (1, 12, 12), strategy=featvis.Strategy(transforms=(flip,)), **kw)
    assert seen == [4] * 10
    plain = featvis.visualize(model, "4", [0, 3], (1, 12, 12), strategy=featvis.Strategy(), **kw)
    assert not torch.allclose(flipped.q, plain.q)
    # one plain SGD step moves q by lr × gradient; with clip 1e-3 the move is at most lr × 1e-3 per image
    one = dict(n_inits=2, lr=0.5, steps=1, seed=3)
    q0, _ = featvis.init_params((1, 12, 12), 2, 0.01, 3)
    clipped = featvis.visualize(model, "4", 0, (1, 12, 12), strategy=featvis.Strategy(clip=1e-3), **one).q[0]
    assert ((clipped - q0).flatten(1).norm(dim=1) <= 0.5 * 1e-3 * (1 + 1e-4)).all()
    assert featvis.strategy_preset("sgd+gc", clip=2.0) == featvis.Strategy(featvis.sgd, clip=2.0)
    with pytest.raises(ValueError, match="clip"):
        featvis.Strategy(clip=0.0)
    with pytest.raises(ValueError, match="strategy"):
        featvis.strategy_preset("sgd+gc+tr")


def test_matches_a_straightforward_reference_loop():
    """visualize (one hook for the whole run, thread setting, trajectory bookkeeping) gives the images of a
    plain loop: model(x), the unit by direct indexing, per-image clip, q ← q − lr·g."""
    model, units, n_inits, lr, clip, steps = tiny_cnn(), [0, 3, 1], 2, 0.5, 0.2, 12
    res = featvis.visualize(model, "4", units, (1, 12, 12), n_inits=n_inits, strategy="sgd+gc", lr=lr,
                            clip=clip, steps=steps, seed=4)
    q = torch.stack([0.01 * torch.randn(1, 12, 12, generator=torch.Generator().manual_seed(4 + i))
                     for i in range(n_inits)]).repeat(len(units), 1, 1, 1).requires_grad_(True)
    rows, cols = torch.arange(len(units) * n_inits), torch.tensor(units).repeat_interleave(n_inits)
    first = None
    for _ in range(steps):
        value = model(q)[rows, cols]  # pixel parameterization without normalization: x = q
        first = value.detach() if first is None else first
        (g,) = torch.autograd.grad(-value.sum(), q)
        norms = g.flatten(1).norm(dim=1)
        g = g * torch.where(norms > clip, clip / norms, torch.ones_like(norms)).view(-1, 1, 1, 1)
        with torch.no_grad():
            q -= lr * g
    torch.testing.assert_close(res.images.reshape(-1, 1, 12, 12), q.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.trajectory[0].reshape(-1), first, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(res.trajectory[-1].reshape(-1), model(q)[rows, cols], rtol=0, atol=1e-6)
    assert not model[4]._forward_hooks


def test_runs_with_the_library_thread_count_and_restores_it(monkeypatch):
    from gsmu.base import runtime
    for value, expected in (("", 1), ("3", 3), ("two", 1), ("0", 1)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert runtime.cpu_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    try:
        featvis.visualize(tiny_cnn(), "4", lambda out: seen.append(torch.get_num_threads()) or out[:, 0],
                          (1, 12, 12), steps=3)
        assert seen == [1] * 4 and torch.get_num_threads() == 2  # 3 steps and the final evaluation
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="n="):
        with runtime.torch_threads(0):
            pass
