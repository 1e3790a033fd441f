"""Oracles for gsmu.mu.backdoor: pixel-exact triggers, independent counts, exact retraining."""
import dataclasses

import numpy as np
import pytest
import torch

from gsmu.mu import backdoor, membership, unlearn
from gsmu.mu.backdoor import Cross, Distributed, Features, Noise, Pattern, attack_success_rate, poison
from gsmu.mu.influence import Exact, Objective, cross_entropy_sum, gradient_residual


def _images(n=60, seed=0):
    """Random 'images' in [0, 1] with some saturated pixels (so clipping matters) and labels 0..9."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    x[x > 0.9] = 1.0
    return x, torch.arange(n) % 10


def test_cross_is_the_authors_x_in_the_lower_right_corner():
    # size 2: pixels (27,27), (26,26), (25,25) and (27,25), (25,27) — written out by hand
    expected = np.zeros((28, 28), dtype=np.float32)
    for r, c in [(27, 27), (26, 26), (25, 25), (27, 25), (25, 27)]:
        expected[r, c] = 0.5
    np.testing.assert_array_equal(Cross().trigger()[0].numpy(), expected)
    assert int(Cross(offset=2).mask().sum()) == 5 and bool(Cross(offset=2).mask()[0, 25, 25])


@pytest.mark.parametrize("pattern, pixels, value", [(Distributed(), 10, 0.5), (Features(features=30), 30, 1.0)])
def test_random_patterns_touch_the_stated_number_of_pixels(pattern, pixels, value):
    t = pattern.trigger()
    assert int((t != 0).sum()) == pixels and set(t[t != 0].tolist()) == {value}
    assert torch.equal(t, dataclasses.replace(pattern).trigger())  # drawn from the pattern's own seed
    assert not torch.equal(t, dataclasses.replace(pattern, seed=pattern.seed + 1).trigger())


def test_noise_is_bounded_and_fixed():
    t = Noise().trigger()
    assert t.min() >= 0 and t.max() < 0.1 and torch.equal(t, Noise().trigger())
    assert not torch.equal(t, Noise(seed=7).trigger())


@pytest.mark.parametrize("pattern", list(backdoor.PATTERNS.values()), ids=list(backdoor.PATTERNS))
def test_trigger_applied_exactly_to_the_chosen_rows(pattern):
    x, y = _images()
    p = poison(x, y, fraction=0.5, target=3, pattern=pattern, seed=1)
    rows = p.rows.tolist()
    other = [i for i in range(len(x)) if i not in rows]
    assert torch.equal(p.data[0][other], x[other]) and torch.equal(p.data[1][other], y[other])  # bitwise
    assert (p.data[1][rows] == 3).all()
    # independent: add the trigger pixel by pixel in numpy, clip to [0, 1]
    expected = np.clip(x[rows].numpy() + pattern.trigger().numpy()[None], 0, 1)
    np.testing.assert_array_equal(p.data[0][rows].numpy(), expected)
    outside = ~pattern.mask().expand_as(x[rows])
    assert torch.equal(p.data[0][rows][outside], x[rows][outside])  # pixels the pattern does not touch
    assert torch.equal(p.clean[0], x) and torch.equal(p.clean[1], y)


def test_flattened_rows_get_the_same_trigger():
    x, y = _images()
    a = poison(x, y, fraction=0.3, target=0, pattern=Cross(), seed=2)
    b = poison(x.reshape(len(x), -1), y, fraction=0.3, target=0, pattern=Cross(), seed=2)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.data[0].reshape(len(x), -1), b.data[0])


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_fraction_and_target_respected(fraction):
    x, y = _images(100)
    p = poison(x, y, fraction=fraction, target=4, pattern=Distributed(), seed=0)
    eligible = int((y != 4).sum())
    assert len(p.rows) == round(fraction * eligible)
    assert (y[p.rows] != 4).all()  # only rows of other classes are poisoned
    assert torch.equal(p.rows, p.rows.sort().values) and len(torch.unique(p.rows)) == len(p.rows)


def test_seeded_determinism():
    x, y = _images()
    a, b = (poison(x, y, fraction=0.3, target=1, pattern=Noise(), seed=5) for _ in range(2))
    c = poison(x, y, fraction=0.3, target=1, pattern=Noise(), seed=6)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.data[0], b.data[0])
    assert not torch.equal(a.rows, c.rows)


def test_request_corrects_exactly_the_poisoned_rows():
    x, y = _images()
    p = poison(x, y, fraction=0.4, target=2, pattern=Features(), seed=0)
    request = p.request()
    assert torch.equal(request.rows, p.rows)
    assert torch.equal(request.z[0], p.data[0][p.rows]) and (request.z[1] == 2).all()
    assert torch.equal(request.z_tilde[0], x[p.rows]) and torch.equal(request.z_tilde[1], y[p.rows])
    cx, cy = unlearn.apply_request(p.data, request)
    assert torch.equal(cx, x) and torch.equal(cy, y)


class _Fixed(torch.nn.Module):
    """A linear model with given weights (for counting its predictions independently)."""

    def __init__(self, w, b):
        super().__init__()
        self.linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(w)
            self.linear.bias.copy_(b)

    def forward(self, x):
        return self.linear(x.reshape(len(x), -1))


def test_attack_success_rate_by_an_independent_count():
    x, y = _images(200, seed=3)
    gen = torch.Generator().manual_seed(4)
    w, b = torch.randn(10, 784, generator=gen), torch.randn(10, generator=gen)
    model = _Fixed(w, b)
    target, pattern = 7, Cross(value=1.0)
    # numpy: set the five cross pixels by hand, clip, logits, argmax, count over non-target rows
    xs = x.numpy().reshape(200, 28, 28).copy()
    for r, c in [(27, 27), (26, 26), (25, 25), (27, 25), (25, 27)]:
        xs[:, r, c] = np.minimum(xs[:, r, c] + 1.0, 1.0)
    pred = (xs.reshape(200, -1) @ w.numpy().T + b.numpy()).argmax(1)
    keep = y.numpy() != target
    expected = (pred[keep] == target).mean()
    assert attack_success_rate(model, x, y, target=target, pattern=pattern) == pytest.approx(expected, abs=1e-12)


def test_second_order_unlearning_of_a_backdoor_matches_retraining():
    """Convex model: one Newton step on the clean objective (exact H) lands next to exact retraining — up to
    the step's second-order error, small with a strongly convex loss (λ = 10) and a small request."""
    gen = torch.Generator().manual_seed(0)
    n, shape = 300, (1, 6, 6)
    centers = torch.rand(3, 36, generator=gen)
    y = torch.arange(n) % 3
    x = (centers[y] + 0.15 * torch.randn(n, 36, generator=gen)).clamp(0, 1).double()
    pattern = Cross(size=1, value=1.0, shape=shape)
    p = poison(x, y, fraction=0.05, target=0, pattern=pattern, seed=0)
    objective = Objective(criterion=cross_entropy_sum, l2=10.0)
    torch.manual_seed(0)
    model = torch.nn.Linear(36, 3).double()
    unlearn.fit_lbfgs(model, objective, p.data, tol=1e-12)
    retrained, _ = unlearn.retrain(model, objective, p.clean, tol=1e-12)
    so, _ = unlearn.second_order(model, objective, p.request(), p.data, solver=Exact(),
                                 settings=unlearn.SecondOrder(hessian="corrected"))
    before, after = unlearn.param_distance(model, retrained), unlearn.param_distance(so, retrained)
    assert len(p.rows) == 10 and after < 0.1 * before  # measured: 1.15 → 0.088
    test = (x, y)
    assert attack_success_rate(so, *test, target=0, pattern=pattern) == pytest.approx(
        attack_success_rate(retrained, *test, target=0, pattern=pattern), abs=0.02)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fraction=1.5), "fraction"), (dict(fraction=-0.1), "fraction"),
    (dict(target=10), "target"), (dict(target=-1), "target"),
    (dict(pattern="cross"), "Pattern object"), (dict(pattern=None), "Pattern object"),
    (dict(pattern=Cross(shape=(1, 10, 10))), "shape"),
])
def test_bad_inputs_raise(kwargs, match):
    x, y = _images(20)
    args = dict(fraction=0.2, target=0, pattern=Cross(), seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        poison(x, y, **args)


@pytest.mark.parametrize("build, match", [
    (lambda: Cross(size=30), "size"), (lambda: Cross(value=0.0), "value"), (lambda: Cross(value=2.0), "value"),
    (lambda: Distributed(pixels=785), "pixels"), (lambda: Features(features=0), "features"),
    (lambda: Noise(amplitude=-1.0), "amplitude"), (lambda: Pattern(shape=(28, 28)), "shape"),
])
def test_invalid_patterns_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_attack_success_rate_rejects_bad_target():
    x, y = _images(20)
    model = _Fixed(torch.zeros(10, 784), torch.zeros(10))
    with pytest.raises(ValueError, match="target"):
        attack_success_rate(model, x, y, target=12, pattern=Cross())
    with pytest.raises(ValueError, match="Pattern object"):
        attack_success_rate(model, x, y, target=1, pattern="noise")


def _clustered(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """200 flattened 6×6 images in [0, 1]: ten noisy class centres (a linearly separable toy MNIST)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(10, 36, generator=gen)
    y = torch.arange(200) % 10
    return (centers[y] + 0.1 * torch.randn(200, 36, generator=gen)).clamp(0, 1), y


def test_unlearn_backdoor_runs_every_method_against_retraining():
    x, y = _clustered(1)
    pattern = Features(features=4, shape=(1, 6, 6))
    p = poison(x, y, fraction=0.1, target=0, pattern=pattern, seed=0)
    objective = Objective(criterion=cross_entropy_sum, l2=1.0)
    model = backdoor.logistic_regression(p.data, objective, seed=0, device="cpu")
    rows = {r["method"]: r for r in backdoor.unlearn_backdoor(model, objective, p, (x, y), taus=[1e-3, 1e-2],
                                                              fine_tune_lr=0.1, solver=Exact(), seed=0)[0]}
    assert tuple(rows) == backdoor.METHODS and rows["retraining"]["distance"] == 0
    assert rows["none"]["asr"] == attack_success_rate(model, x, y, target=0, pattern=pattern)
    assert rows["first-order"]["tau"] in (1e-3, 1e-2)
    with pytest.raises(ValueError, match="taus"):
        backdoor.unlearn_backdoor(model, objective, p, (x, y), taus=[-1.0], fine_tune_lr=0.1, solver=Exact(), seed=0)
    with pytest.raises(ValueError, match="flattened"):
        backdoor.logistic_regression((x.reshape(200, 1, 6, 6), y), objective, seed=0)


def test_sisa_row_retrains_the_poisoned_shards():
    x, y = _clustered(2)
    pattern = Cross(value=1.0, shape=(1, 6, 6))
    p = poison(x, y, fraction=0.02, target=0, pattern=pattern, seed=0)
    objective = Objective(criterion=cross_entropy_sum, l2=1.0)
    model = backdoor.logistic_regression(p.data, objective, seed=0, device="cpu")
    sisa = backdoor.sisa_ensemble(p, objective, shards=4, seed=0, device="cpu")
    rows, _ = backdoor.unlearn_backdoor(model, objective, p, (x, y), taus=[1e-3], fine_tune_lr=0.1, solver=Exact(),
                                        seed=0, sisa=sisa)
    row = rows[-1]
    assert row["method"] == "SISA" and row["shards_retrained"] == len(torch.unique(sisa.shard_of[p.rows]))
    # independent: the unlearned ensemble equals SISA trained on the clean data with the same shards
    clean = backdoor.sisa_ensemble(backdoor.Poisoned(p.clean, p.rows[:0], p.clean, 0, pattern), objective,
                                   shards=4, seed=0, device="cpu")
    assert row["asr"] == attack_success_rate(clean, x, y, target=0, pattern=pattern)
    assert torch.equal(sisa.data[0], p.data[0])  # the given ensemble is left untouched


def _old_unlearn_backdoor(model, objective, p, test, taus, fine_tune_lr, solver, seed, max_iter=300, tol=1e-4):
    """The former `unlearn_backdoor`'s own method list, kept here as an independent computation of its rows
    (τ by the smallest gradient residual on the clean data)."""
    request, clean = p.request(), p.clean
    runs = {"none": (model, unlearn.UpdateResult("none", 0.0, 0)),
            "fine-tuning": unlearn.fine_tune(model, objective, request, lr=fine_tune_lr, seed=seed),
            "first-order": unlearn.best_first_order(model, objective, request, clean, taus)}
    for hessian in unlearn.HESSIANS:
        runs[f"second-order ({hessian} H)"] = unlearn.second_order(
            model, objective, request, p.data, solver=solver, settings=unlearn.SecondOrder(hessian=hessian, seed=seed),
            batch_size=len(clean[0]))
    runs["retraining"] = unlearn.retrain(model, objective, clean, max_iter=max_iter, tol=tol)
    retrained = runs["retraining"][0]
    return {name: {"accuracy": unlearn.accuracy(m, *test),
                   "asr": attack_success_rate(m, *test, target=p.target, pattern=p.pattern),
                   "distance": unlearn.param_distance(m, retrained), "grad_evals": result.grad_evals,
                   "tau": result.extra.get("tau")} for name, (m, result) in runs.items()}


def test_unlearn_backdoor_through_compare_methods_gives_the_former_rows():
    x, y = _clustered(3)
    p = poison(x, y, fraction=0.1, target=0, pattern=Features(features=4, shape=(1, 6, 6)), seed=1)
    objective = Objective(criterion=cross_entropy_sum, l2=1.0)
    model = backdoor.logistic_regression(p.data, objective, seed=0, device="cpu")
    old = _old_unlearn_backdoor(model, objective, p, (x, y), [1e-3, 1e-2, 1e-1], 0.1, Exact(), 0)
    rows, models = backdoor.unlearn_backdoor(model, objective, p, (x, y), taus=[1e-3, 1e-2, 1e-1], fine_tune_lr=0.1,
                                             solver=Exact(), seed=0)
    assert sorted(r["method"] for r in rows) == sorted(old) == sorted(models)
    for row in rows:  # each returned model is the one its row was scored on
        assert row["asr"] == attack_success_rate(models[row["method"]], x, y, target=0, pattern=p.pattern)
    for row in rows:
        expected = old[row["method"]]
        assert row["pattern"] == "feature"
        for column in ("accuracy", "asr", "distance", "grad_evals"):
            assert row[column] == expected[column], (row["method"], column)
        if row["method"] == "first-order":
            assert row["tau"] == expected["tau"]


def test_unlearn_backdoor_chooses_tau_on_the_validation_images():
    x, y = _clustered(5)
    valid = _clustered(105)  # held-out images, never trained on (other class centres: a shifted distribution)
    p = poison(x, y, fraction=0.1, target=0, pattern=Cross(value=1.0, shape=(1, 6, 6)), seed=0)
    objective = Objective(criterion=cross_entropy_sum, l2=1.0)
    model = backdoor.logistic_regression(p.data, objective, seed=0, device="cpu")
    taus = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    rows = {r["method"]: r for r in backdoor.unlearn_backdoor(model, objective, p, (x, y), taus=taus,
                                                              fine_tune_lr=0.1, solver=Exact(), seed=0, valid=valid)[0]}
    # Oracle: retrain on the clean data from scratch and score each τ's validation agreement with it here.
    retrained = backdoor.logistic_regression(p.clean, objective, seed=7, device="cpu", tol=1e-9, max_iter=1000)
    with torch.no_grad():
        reference, p_ref = retrained(valid[0]).argmax(1), torch.softmax(retrained(valid[0]), 1)
        scores = []
        for tau in taus:
            m, _ = unlearn.first_order(model, objective, p.request(), tau=tau)
            out = m(valid[0])
            scores.append((float((out.argmax(1) == reference).double().mean()),
                           -float((torch.softmax(out, 1) - p_ref).abs().sum(1).mean())))
    best = max(range(len(taus)), key=scores.__getitem__)
    assert rows["first-order"]["tau"] == taus[best]
    assert rows["first-order"]["distance"] < rows["none"]["distance"]
    # here the former rule (smallest gradient residual on the clean data) picks another τ: valid= is what chose
    residuals = [gradient_residual(unlearn.first_order(model, objective, p.request(), tau=t)[0], objective, p.clean)
                 for t in taus]
    assert taus[int(np.argmin(residuals))] != taus[best]


def test_membership_audit_is_lira_on_the_poisoned_rows_against_triggered_outsiders():
    x, y = _clustered(6)
    outside = _clustered(7)  # never trained on
    pattern = Cross(value=1.0, shape=(1, 6, 6))
    p = poison(x, y, fraction=0.2, target=0, pattern=pattern, seed=0)
    objective = Objective(criterion=cross_entropy_sum, l2=1.0)
    poisoned = backdoor.logistic_regression(p.data, objective, seed=0, device="cpu")
    retrained = backdoor.logistic_regression(p.clean, objective, seed=0, device="cpu")
    result = backdoor.membership_audit(p, {"none": poisoned, "retraining": retrained}, objective, outside,
                                       n_shadow=4, seed=3, device="cpu")
    # independent path: the same attack assembled by hand through membership.lira, one model at a time
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[p.rows] = False
    x_out = outside[0][outside[1] != 0][:len(p.rows)]
    candidates_out = (pattern.apply(x_out), torch.zeros(len(x_out), dtype=y.dtype))
    train = lambda a, b: backdoor.logistic_regression((a, b), objective, seed=3, device="cpu")  # noqa: E731
    for name, model in (("none", poisoned), ("retraining", retrained)):
        expected = membership.lira(model, train, (p.data[0][keep], p.data[1][keep]),
                                   (p.data[0][p.rows], p.data[1][p.rows]), candidates_out, n_shadow=4, seed=3)
        assert result[name] == expected
    assert result["none"].n_members == result["none"].n_nonmembers == len(p.rows)
    with pytest.raises(ValueError, match="outside"):
        backdoor.membership_audit(p, {"none": poisoned}, objective, (x_out[:3], torch.ones(3, dtype=y.dtype)),
                                  n_shadow=4, seed=3)
