"""Tests of gsmu.gs.slingshot: loss oracles built from models of known shape, a short manipulation, validation."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gsmu.gs import featvis, metrics, slingshot


class Quadratic(nn.Module):
    """h(x) = −γ/2‖x − x_t‖² (form="gradient") or γ(1 − mean((x − x_t)²)) (form="activation"), read at `head`."""

    def __init__(self, x_t: torch.Tensor, gamma: float, form: str):
        super().__init__()
        self.x_t, self.gamma, self.form = x_t, gamma, form
        self.scale = nn.Parameter(torch.ones(1))
        self.head = nn.Identity()

    def forward(self, x):
        d = (x - self.x_t).pow(2).flatten(1)
        h = -self.gamma / 2 * d.sum(1) if self.form == "gradient" else self.gamma * (1 - d.mean(1))
        return self.head((self.scale * h).unsqueeze(1))


@pytest.mark.parametrize("form", ["gradient", "activation"])
def test_loss_is_zero_exactly_for_the_shaped_unit(form):
    torch.manual_seed(0)
    x_t = torch.rand(1, 6, 6)
    eta = featvis.Parameterization("pixel", (1, 6, 6))  # no normalization: q is the image
    q_t = eta.inverse(x_t)
    q = slingshot.sample_manipulation_set(q_t, 16, 0.1, generator=torch.Generator().manual_seed(1))
    loss = slingshot.manipulation_loss(Quadratic(x_t, 10.0, form), eta, "head", 0, q, q_t, 10.0, form)
    assert loss.item() < 1e-10
    wrong = slingshot.manipulation_loss(Quadratic(x_t, 5.0, form), eta, "head", 0, q, q_t, 10.0, form)
    assert wrong.item() > 1e-3


def test_gradient_loss_trains_through_double_backward():
    x_t = torch.rand(1, 6, 6)
    model = Quadratic(x_t, 5.0, "gradient")  # the right shape, half the slope: the loss must move `scale` to 2
    eta = featvis.Parameterization("pixel", (1, 6, 6))
    q_t = eta.inverse(x_t)
    q = slingshot.sample_manipulation_set(q_t, 8, 0.1, generator=torch.Generator().manual_seed(0))
    slingshot.manipulation_loss(model, eta, "head", 0, q, q_t, 10.0).backward()
    assert model.scale.grad.item() < 0  # gradient descent increases the scale toward γ_target/γ = 2


def test_manipulation_set_tunnel_and_no_tunnel():
    q_t = torch.full((1, 4, 4), 3.0)
    gen = torch.Generator().manual_seed(0)
    q = slingshot.sample_manipulation_set(q_t, 500, 0.1, tunnel=False, generator=gen)
    near_0 = q.abs().amax((1, 2, 3)) <= 0.1
    near_t = (q - q_t).abs().amax((1, 2, 3)) <= 0.1
    assert (near_0 ^ near_t).all() and 150 < near_0.sum() < 350
    q = slingshot.sample_manipulation_set(q_t, 500, 0.1, tunnel=True, generator=gen)
    p = q.mean((1, 2, 3)) / 3.0
    assert p.min() > -0.04 and p.max() < 1.04 and ((p > 0.2) & (p < 0.8)).float().mean() > 0.5


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def fv_distance(model, target, steps=60):
    res = featvis.visualize(model, "5", 0, (1, 8, 8), n_inits=4, strategy="sgd+gc", lr=0.1, steps=steps,
                            seed=3)
    return metrics.mse(res.images[0], target).mean().item()


def test_few_steps_move_fv_toward_target_and_keep_original():
    original = tiny_cnn()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    x_data = torch.rand(256, 1, 8, 8)
    settings = slingshot.Settings(layer="5", unit=0, alpha=0.5, steps=150, check_every=50, check_inits=2,
                                  check_fv_steps=60, lr=3e-3, manip_batch=16, pres_batch=32,
                                  max_acc_drop=None)  # the movement itself; the checkpoint rule is tested below
    model, log = slingshot.manipulate(original, target, x_data, settings, progress=False)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert fv_distance(model, target) < 0.5 * fv_distance(original, target)
    assert len(log.loss_m) == 150 and log.checks[0][0] == 0


def test_checkpoint_rule_keeps_only_preserving_checkpoints():
    """The kept checkpoint is the best-SSIM one among those whose recorded agreement meets the bound; with a
    bound no manipulated checkpoint meets, the original weights come back (step 0)."""
    original, target = tiny_cnn(), torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    x_data = torch.rand(256, 1, 8, 8)
    common = dict(layer="5", unit=0, alpha=0.1, steps=120, check_every=40, check_inits=2, check_fv_steps=30,
                  lr=1e-2, manip_batch=16, pres_batch=32, check_rows=200)
    free_model, free = slingshot.manipulate(original, target, x_data, slingshot.Settings(**common, max_acc_drop=None),
                                            progress=False)
    assert [s for s, _ in free.agreement] == [s for s, _ in free.checks] == [0, 40, 80, 120]
    assert free.best_ssim == pytest.approx(max(v for _, v in free.checks), abs=1e-5)  # checks are rounded
    predicted = original(x_data).argmax(1)
    rows = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:200]
    kept_agreement = (free_model(x_data[rows]).argmax(1) == predicted[rows]).float().mean().item()
    assert kept_agreement == pytest.approx(dict(free.agreement)[free.best_step], abs=1e-5)  # independent recount
    bound = 1 - min(a for step, a in free.agreement if step > 0) - 1e-6  # the least-agreeing checkpoint fails
    ruled_model, ruled = slingshot.manipulate(original, target, x_data, slingshot.Settings(**common, max_acc_drop=max(bound, 0.0)),
                                              progress=False)
    kept = dict(ruled.agreement)[ruled.best_step]
    assert 1 - kept <= max(bound, 0.0)
    allowed = [v for s, v in ruled.checks if 1 - dict(ruled.agreement)[s] <= max(bound, 0.0)]
    assert ruled.best_ssim == pytest.approx(max(allowed), abs=1e-5) and len(allowed) < len(ruled.checks)
    strict_model, strict = slingshot.manipulate(original, target, x_data, slingshot.Settings(**common, max_acc_drop=0.0),
                                                progress=False)
    assert all(a < 1 for step, a in strict.agreement if step > 0)  # lr 1e-2 on a random 3-class net moves predictions
    assert strict.best_step == 0
    assert all(torch.equal(a, b) for a, b in zip(strict_model.state_dict().values(), original.state_dict().values()))


def test_checkpoint_rule_with_labels_bounds_the_accuracy_drop():
    """With labels the rule compares accuracy on the check rows with the original's (recounted here)."""
    original, target = tiny_cnn(), torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    x_data = torch.rand(256, 1, 8, 8)
    labels = original(x_data).argmax(1).detach()
    labels[::4] = (labels[::4] + 1) % 3  # the original is right on 3/4 of the images
    common = dict(layer="5", unit=0, alpha=0.1, steps=120, check_every=40, check_inits=2, check_fv_steps=30,
                  lr=1e-2, manip_batch=16, pres_batch=32, check_rows=200)
    model, log = slingshot.manipulate(original, target, x_data, slingshot.Settings(**common, max_acc_drop=0.05),
                                      progress=False, labels=labels)
    rows = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:200]
    acc = lambda net: (net(x_data[rows]).argmax(1) == labels[rows]).float().mean().item()  # noqa: E731
    accuracy = dict(log.accuracy)
    assert accuracy[0] == pytest.approx(acc(original), abs=1e-5)
    assert accuracy[log.best_step] == pytest.approx(acc(model), abs=1e-5)
    assert acc(original) - acc(model) <= 0.05 + 1e-6
    allowed = [v for st, v in log.checks if accuracy[0] - accuracy[st] <= 0.05 + 1e-6]
    assert log.best_ssim == pytest.approx(max(allowed), abs=1e-5)
    with pytest.raises(ValueError, match="labels"):
        slingshot.manipulate(original, target, x_data, slingshot.Settings(**common), progress=False, labels=labels[:10])


def test_precomputed_reference_equals_per_step_forward():
    original, x = tiny_cnn(), torch.rand(300, 1, 8, 8)
    ref = slingshot.reference_outputs(original, "5", x, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(ref, original(x), atol=1e-6)
    model = tiny_cnn(1)
    idx = torch.arange(0, 300, 7)
    a = slingshot.preservation_loss(model, original, "5", 0, x[idx], 0.3)
    b = slingshot.preservation_loss(model, original, "5", 0, x[idx], 0.3, ref[idx])
    assert torch.allclose(a, b, atol=1e-6)
    assert slingshot.reference_outputs(original, "1", x, torch.device("cpu"), max_elements=1000) is None


@pytest.mark.parametrize("change,match", [
    (dict(max_acc_drop=1.5), "max_acc_drop"), (dict(check_rows=0), "check_rows"),

    (dict(alpha=1.5), "alpha"), (dict(gamma=0.0), "gamma"), (dict(unit=3), "out of range"),
    (dict(layer="fc"), "layer"), (dict(noise="laplace"), "noise"), (dict(w=-0.1), "w="),
    (dict(check_strategy="adam+tr"), "check_strategy"),
])
def test_validation_errors(change, match):
    settings = slingshot.Settings(**{"layer": "5", "unit": 0, **change})
    with pytest.raises(ValueError, match=match):
        slingshot.manipulate(tiny_cnn(), torch.zeros(1, 8, 8), torch.rand(4, 1, 8, 8), settings, progress=False)


@pytest.mark.parametrize("shape", [(1, 7, 8), (3, 8, 8)])
def test_target_of_wrong_size_or_channels(shape):
    settings = slingshot.Settings(layer="5", unit=0)
    with pytest.raises(ValueError, match="target image"):
        slingshot.manipulate(tiny_cnn(), torch.zeros(*shape), torch.rand(4, 1, 8, 8), settings, progress=False)


def test_notebooks_02_to_04_share_one_fine_tuning_budget():
    """02 passes every loss setting, 03 its α, 04 none: the same Settings (the same cache key) for α 0.8."""
    from dataclasses import asdict
    from gsmu.gs import profiles
    n02 = profiles.slingshot_settings("quick", unit=0, alpha=0.8, w=0.0, gamma=10.0, sigma=0.1, seed=1)
    sweep = profiles.AlphaSweep.for_profile("quick")
    n03 = sweep.settings("quick", 0.8, unit=0, seed=1)
    n04 = profiles.slingshot_settings("quick", unit=0, seed=1)
    assert asdict(n02) == asdict(n03) == asdict(n04)
    budget = profiles.FineTuning.for_profile("quick")
    assert (n04.lr, n04.steps, n04.check_every, n04.pres_batch) == (budget.lr, budget.steps, budget.check_every,
                                                                     budget.pres_batch)
    paper = profiles.slingshot_settings("paper")
    assert (paper.lr, paper.steps) == (1e-3, 30 * profiles.PAPER_EPOCH)  # the authors' 30 epochs at lr 1e-3
    assert n04.lr == paper.lr  # the quick profile shortens the authors' fine-tuning, it does not change its rate
    assert set(profiles.NOTEBOOKS) >= {"00_models", "01_feature_visualization", "02_slingshot_manipulation",
                                       "03_slingshot_alpha", "04_slingshot_defense"}
    # the small-α end of the quick sweep stops early; the paper profile gives every α the full budget
    assert sweep.settings("quick", 0.05, seed=1).steps == sweep.small_alpha_steps < budget.steps
    assert profiles.AlphaSweep.for_profile("paper").settings("paper", 0.05).steps == paper.steps
    assert all(cls.grid(p)["seed"] == [0, 1, 2] for cls in profiles.NOTEBOOKS.values() for p in ("quick", "paper"))
    assert len(sweep.alphas) >= 5 and sweep.ends == (0.05, 0.8)  # the issue's five points; the claims' two ends
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        profiles.AlphaSweep.for_profile("quick", alphas=(0.05, 1.5))
    with pytest.raises(ValueError, match="ends"):
        profiles.AlphaSweep.for_profile("quick", ends=(0.3, 0.8))
    # the paper grid: a whole-sweep job per seed plus one job per α; only_alpha picks one swept α or refuses
    paper_sweep = profiles.AlphaSweep.for_profile("paper")
    assert profiles.AlphaSweep.grid("paper")["only_alpha"] == [None, *paper_sweep.alphas]
    assert "only_alpha" not in profiles.AlphaSweep.grid("quick")
    assert sweep.points() == sweep.alphas and sweep.points(0.2) == (0.2,)
    with pytest.raises(ValueError, match="only_alpha=0.3 is not one of the swept"):
        sweep.points(0.3)
    with pytest.raises(ValueError, match="n_fv"):
        profiles.Manipulation.for_profile("quick", n_fv=3)
    with pytest.raises(TypeError, match="alph"):
        profiles.slingshot_settings("quick", alph=0.5)


def test_fv_check_runs_the_settings_check_strategy(monkeypatch):
    # The check is the AM named by check_strategy, at check_fv_lr and check_fv_steps (the ImageNet preset's:
    # the paper's Adam+GC+TR); its SSIM is the mean over the check's inits.
    seen = {}

    def fake(model, layer, unit, shape, **kw):
        seen.update(kw)
        return SimpleNamespace(images=torch.zeros(1, 2, *shape))
    monkeypatch.setattr(featvis, "visualize", fake)
    s = slingshot.Settings(layer="5", unit=0, check_strategy="adam+gc+tr", check_fv_lr=0.01, check_fv_steps=7,
                           check_inits=2)
    eta = featvis.parameterization("pixel", (1, 8, 8))
    value = slingshot.fv_check(tiny_cnn(), eta, torch.zeros(1, 8, 8), s, torch.device("cpu"))
    assert (seen["strategy"], seen["lr"], seen["steps"], seen["n_inits"]) == ("adam+gc+tr", 0.01, 7, 2)
    assert value == pytest.approx(1.0)  # an all-zero FV against an all-zero target
