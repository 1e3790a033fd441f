"""Tests of the MU authors' CIFAR-10 CNN (`gsmu.base.models.AuthorsCifarCNN`, MU paper §6.3) and of its use in
the label-poisoning repair of `gsmu.mu.poison`. Oracles: a parameter count from the authors' layer list,
the same update computed on the full model with a parameter subset, and runs of the whole pipeline."""
import dataclasses
import functools
import math

import pytest
import torch

from gsmu.base import cifar, models, train
from gsmu.mu import poison, unlearn
from gsmu.mu.profiles import LabelPoisoning


def _authors_parameter_count(channels: int = 128, dense: int = 512, classes: int = 10) -> int:
    # The authors' Keras layer list: six Conv2D(3×3, same) each followed by BatchNormalization (gamma, beta
    # trainable), three 2×2 pools (32 → 4), Dense(dense) + BatchNormalization, Dense(classes).
    conv_in = [3] + [channels] * 5
    convs = sum(3 * 3 * c_in * channels + channels for c_in in conv_in)
    conv_norms = 6 * 2 * channels
    return convs + conv_norms + (4 * 4 * channels * dense + dense) + 2 * dense + (dense * classes + classes)


def test_authors_cnn_has_the_authors_parameter_count_and_shapes():
    torch.manual_seed(0)
    model = models.authors_cifar_cnn().eval()
    # 1,798,282 is also the num_params of the authors' published poisoning results.
    assert sum(p.numel() for p in model.parameters()) == _authors_parameter_count() == 1_798_282
    x = torch.rand(3, *model.input_shape)
    assert model(x).shape == (3, 10)
    assert poison.build_model("cifar10").__class__ is models.AuthorsCifarCNN
    assert poison.head_inputs(model, poison._head_modules(model, "head"), x).shape == (3, 2048)
    assert poison.head_inputs(model, poison._head_modules(model, "last"), x).shape == (3, 512)
    small = models.authors_cifar_cnn(channels=8, dense=16, num_classes=4)
    assert sum(p.numel() for p in small.parameters()) == _authors_parameter_count(8, 16, 4)


def test_authors_cnn_factory_rejects_bad_sizes():
    with pytest.raises(ValueError, match="channels"):
        models.authors_cifar_cnn(channels=0)
    with pytest.raises(TypeError, match="dense"):
        models.authors_cifar_cnn(dense=2.5)
    with pytest.raises(ValueError, match="num_classes"):
        models.authors_cifar_cnn(num_classes=1)


def _small_scenario():
    # The authors' architecture at reduced width (same modules and names), BatchNorm statistics moved off
    # their initial values so that the head's BatchNorm is not the identity, random CIFAR-shaped data.
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = models.authors_cifar_cnn(channels=4, dense=16).double()
    x = torch.rand(60, 3, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.arange(60) % 10
    with torch.no_grad():
        model.train()(x)
    model.eval()
    y_bad, rows = poison.flip_labels(y, 0.2, generator=generator)
    return poison.Scenario("cifar10", 0.2, x, y, y_bad, rows, (x, y), (x, y),
                           LabelPoisoning.for_profile("quick").for_dataset("cifar10").recipe, 0, model, model)


@pytest.mark.parametrize("method, options", [
    ("first-order", dict(tau=1e-3)),
    ("second-order", dict(curvature="gauss-newton", damping=1.0, max_iter=30, tol=1e-10)),
])
def test_head_update_of_the_authors_cnn_equals_the_restricted_update(method, options):
    sc = _small_scenario()
    ours, _ = poison.run_method(sc, method, subset="head", device="cpu", **options)
    update = unlearn.first_order if method == "first-order" else unlearn.second_order
    extra = () if method == "first-order" else (sc.poisoned_data,)
    oracle, _ = update(sc.poisoned, poison.objective(), sc.request, *extra, params=["fc", "bn", "out"], **options)
    for (name, p), q in zip(ours.named_parameters(), oracle.parameters()):
        assert torch.allclose(p, q, atol=1e-8, rtol=1e-6), name
    assert not torch.equal(ours.bn.weight, sc.poisoned.bn.weight)
    assert torch.equal(ours.features[0].weight, sc.poisoned.features[0].weight)


def test_tiny_cifar10_pipeline_runs_end_to_end(monkeypatch, tmp_path):
    # The pipeline on 256-image slices of the offline CIFAR-10 copy, with the authors' network at reduced
    # width so it trains in a second; its checkpoints go to a temporary folder, never into the shared cache.
    # The shuffled training set is loaded once although both the train and the val split slice it.
    monkeypatch.setattr(cifar, "shuffled", functools.lru_cache(cifar.shuffled))
    split = poison.load_split
    monkeypatch.setattr(poison, "load_split", lambda dataset, part: tuple(t[:256] for t in split(dataset, part)))
    monkeypatch.setattr(train, "cache_dir", lambda kind: tmp_path / kind)
    recipe = {**LabelPoisoning.for_profile("quick").for_dataset("cifar10").recipe, "epochs": 1}
    sc = poison.make_scenario("cifar10", 0.2, n_train=200, n_val=100, seed=0, recipe=recipe, device="cpu",
                              sizes={"channels": 4, "dense": 32})
    assert isinstance(sc.poisoned, models.AuthorsCifarCNN) and len(sc.rows) > 0
    assert sc.poisoned.fc.out_features == 32 == sc.build().fc.out_features  # the sizes reach every network
    runs = [("first-order", "all", dict(tau=1e-4)), ("first-order", "head", dict(tau=1e-3)),
            ("second-order", "head", dict(curvature="gauss-newton", damping=1.0, max_iter=20)),
            ("retraining", "all", {})]
    for method, subset, options in runs:
        model, row = poison.run_method(sc, method, subset=subset, device="cpu", **options)
        assert math.isfinite(row["accuracy"]) and math.isfinite(row["passes"]) and row["seconds"] >= 0, method
        assert all(torch.isfinite(p).all() for p in model.parameters()), method
    # Retraining with the scenario's seed and recipe reproduces the cached clean model exactly.
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), sc.clean.state_dict().values()))


def test_profiles_select_the_cifar10_settings_and_leave_mnist_as_it_was():
    quick, paper = LabelPoisoning.for_profile("quick"), LabelPoisoning.for_profile("paper")
    for cfg in (quick, paper):
        for name in ("mnist", "fashion_mnist"):
            assert cfg.for_dataset(name) == dataclasses.replace(cfg, dataset=name)
    cifar = paper.for_dataset("cifar10")
    assert cifar.recipe == {**paper.recipe, "epochs": 100, "batch_size": 64, "lr": 1e-3}
    assert (cifar.n_train, cifar.budgets, cifar.main_budget) == (40000, (0.05, 0.1, 0.2), 0.2)
    assert dict(cifar.model_sizes) == {"channels": 128, "dense": 512}  # the authors' network at paper size
    small = quick.for_dataset("cifar10")
    assert small.n_train < cifar.n_train and dict(small.model_sizes)["channels"] < 128
    assert "cifar_" not in repr(small) and "channels" in repr(small)  # the printed settings are the data set's own
    # a notebook's budgets override the data set's; a main budget outside them is refused before any training
    assert quick.for_dataset("cifar10", budgets=(0.2, 0.4)).budgets == (0.2, 0.4)
    with pytest.raises(ValueError, match="main_budget=0.3 must be one of the budgets"):
        quick.for_dataset("cifar10", main_budget=0.3)
    with pytest.raises(ValueError, match="dataset"):
        quick.for_dataset("svhn")
    with pytest.raises(ValueError, match="taus must not be empty"):
        quick.for_dataset("mnist", taus=())
    # both orders take the authors' 10 iterative steps; the whole-model update is 1 step in quick, 10 in paper
    assert quick.iterative_steps == paper.iterative_steps == small.iterative_steps == 10
    assert (quick.whole_steps, paper.whole_steps) == (1, 10)
    with pytest.raises(ValueError, match="iterative_steps=0"):
        quick.for_dataset("cifar10", iterative_steps=0)
    with pytest.raises(TypeError, match="whole_steps=2.5"):
        quick.for_dataset("mnist", whole_steps=2.5)
    # the narrow quick network has its own rates (the MNIST CNN's moved it by nothing, its fine-tuning rate diverged)
    assert min(small.taus) > max(quick.taus) and max(small.fine_tune_lrs) < min(quick.fine_tune_lrs)
    with pytest.raises(ValueError, match="apply to the CIFAR-10 network only"):
        poison.build_model("mnist", channels=8)
