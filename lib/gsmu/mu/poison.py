"""Label-flip poisoning of an image classifier and its repair by unlearning the flipped labels.

Implements the label experiment of *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023,
§6.3 "Unlearning labels" / poisoning repair): a share of each class's training labels is flipped
`s → 9 − s`, a CNN is trained on the poisoned data, and the flips are unlearned with the request
`Z` = poisoned rows with their wrong labels, `Z̃` = the same rows with their clean labels. This module holds
the poisoning, the cached clean/poisoned CNNs (MNIST and Fashion-MNIST with the 6-layer CNN; CIFAR-10, offline
through `gsmu.base.cifar`, with the authors' 6×128 conv + BatchNorm network `models.AuthorsCifarCNN`), one
runner that applies any unlearning method of `gsmu.mu.unlearn` (first-order, second-order, iterative,
fine-tuning, SISA, retraining) and scores it by test accuracy, *percent restored*
`(after − poisoned)/(clean − poisoned)`, gradient evaluations and wall time.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..base import cifar, data, models, train
from . import cost, unlearn
from .curvature import Nystrom
from .influence import CG, Curvature, Objective, ParamSpace, gradient_difference, top_eigenvalue
from ..base.runtime import device_of, check_choice, check_profile, check_range, get_device
from .profiles import LabelPoisoning

DATASETS = ("mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10



def flip_labels(y: Tensor, budget: float, *, generator: torch.Generator,
                num_classes: int = NUM_CLASSES) -> tuple[Tensor, Tensor]:
    """The authors' poisoning: in every class s, a share `budget` of its rows (drawn with `generator`)
    gets the label `num_classes − 1 − s`. Returns (poisoned labels, sorted indices of the flipped rows)."""
    check_range("budget", budget, 0.0, 1.0)
    if num_classes % 2:
        raise ValueError(f"num_classes={num_classes} must be even: with an odd count s → {num_classes - 1} − s "
                         f"maps the middle class onto itself.")
    if len(y) == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y must hold labels in [0, {num_classes - 1}]; got a vector of {len(y)} labels.")
    poisoned, picked = y.clone(), []
    for s in range(num_classes):
        members = (y == s).nonzero().reshape(-1)
        chosen = members[torch.randperm(len(members), generator=generator)[:round(budget * len(members))]]
        poisoned[chosen] = num_classes - 1 - s
        picked.append(chosen)
    return poisoned, torch.cat(picked).sort().values


def load_split(dataset: str, split: str) -> tuple[Tensor, Tensor]:
    """Images in [0, 1] and labels of `dataset` ('train', 'val' or 'test'; Fashion-MNIST and CIFAR-10 have
    no 'val' split, so theirs is the last 10k training images, kept out of 'train')."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("split", split, ("train", "val", "test"))
    if dataset == "mnist":
        return data.load_mnist(split)
    loader = data.load_fashion_mnist if dataset == "fashion_mnist" else cifar.shuffled
    if split == "test":
        return loader("test")
    x, y = loader("train")
    part = slice(len(x) - 10000, None) if split == "val" else slice(0, len(x) - 10000)
    return x[part], y[part]


def build_model(dataset: str, **sizes: int) -> nn.Module:
    """The network the experiment poisons: the 6-layer CNN for (Fashion-)MNIST, the authors' CIFAR-10 CNN
    (6 × 128 conv + BatchNorm, dense 512, §6.3) for CIFAR-10, or a narrower one of its shape with `sizes`
    (`channels`, `dense`: `LabelPoisoning.model_sizes`)."""
    check_choice("dataset", dataset, DATASETS)
    if dataset == "cifar10":
        return models.authors_cifar_cnn(**sizes)
    if sizes:
        raise ValueError(f"sizes={sizes} apply to the CIFAR-10 network only; {dataset}'s CNN has a fixed size.")
    return models.MnistCNN(dataset=dataset)


def data_digest(x: Tensor, y: Tensor) -> str:
    """SHA-256 of the bytes of a data set — names exactly what a cached model was trained on."""
    return train.tensor_digest(x, y)


def train_cnn(dataset: str, x: Tensor, y: Tensor, *, recipe: dict, seed: int, sizes: dict | None = None,
              device: str | torch.device | None = None, progress: bool = False) -> nn.Module:
    """`build_model(dataset, **sizes)` trained on (x, y) with `recipe` (`train.fit_classifier` arguments),
    cached under the digest of the data, so clean, poisoned and SISA-shard models are trained once."""
    sizes = dict(sizes or {})
    key = {"name": f"poison_{dataset}", "data": data_digest(x, y), "seed": seed, **recipe, **sizes}
    if dataset == "fashion_mnist":  # normalized by its own statistics (not MNIST's, as models cached before)
        key["normalize"] = dataset

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return build_model(dataset, **sizes)

    def fit(model: nn.Module) -> None:
        train.fit_classifier(model, x, y, seed=seed, device=device, progress=progress, **recipe)

    return train.cached_model(key, build, fit, device, probe=train.loss_probe(x[:64], y[:64]))


@dataclass
class Scenario:
    """One poisoned training set and its two models: `clean` (trained on `y_clean`) and `poisoned`."""

    dataset: str
    budget: float
    x: Tensor
    y_clean: Tensor
    y_poisoned: Tensor
    rows: Tensor
    test: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    recipe: dict
    seed: int
    clean: nn.Module
    poisoned: nn.Module
    sizes: dict = field(default_factory=dict)  # the network's sizes (`build_model`); empty: the default network
    clean_acc: float = field(init=False)
    poisoned_acc: float = field(init=False)
    # What the frozen body feeds the head, per subset: computed once, reused by every head update (its
    # cost stays counted in each update's passes; clear it to time an update from scratch).
    head_cache: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.clean_acc = unlearn.accuracy(self.clean, *self.test)
        self.poisoned_acc = unlearn.accuracy(self.poisoned, *self.test)

    def build(self) -> nn.Module:
        """A fresh, untrained network of the scenario's kind (`build_model(dataset, **sizes)`)."""
        return build_model(self.dataset, **self.sizes)

    @property
    def request(self) -> unlearn.Request:
        """Z = the flipped rows with their wrong labels, Z̃ = the same rows with the clean labels."""
        return unlearn.fix_labels(self.x, self.y_poisoned, self.y_clean, self.rows, num_classes=NUM_CLASSES)

    @property
    def poisoned_data(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y_poisoned

    def restored(self, accuracy: float) -> float:
        """Percent of the poisoning gap closed: 100·(after − poisoned)/(clean − poisoned); NaN without a gap."""
        gap = self.clean_acc - self.poisoned_acc
        return 100 * (accuracy - self.poisoned_acc) / gap if gap else float("nan")


def make_scenario(dataset: str, budget: float, *, n_train: int, profile: str = "quick", seed: int = 0,
                  n_val: int = 2000, n_test: int | None = None, device: str | torch.device | None = None,
                  progress: bool = False, recipe: dict | None = None, sizes: dict | None = None) -> Scenario:
    """The first `n_train` training images of `dataset`, a share `budget` of each class flipped (seeded),
    and the clean and poisoned CNNs (`build_model(dataset, **sizes)`) trained on them (cached) with `recipe` —
    by default the profile's (`gsmu.mu.profiles.LabelPoisoning.recipe`). Models are scored on the first `n_test`
    test images (None: all) and `n_val` validation images."""
    sizes = dict(sizes or {})
    build_model(dataset, **sizes)  # a bad size fails here, before any data is loaded or a network trained
    recipe = dict(recipe) if recipe is not None else LabelPoisoning.for_profile(check_profile(profile)).recipe
    x, y = load_split(dataset, "train")
    if not (100 <= n_train <= len(x)):
        raise ValueError(f"n_train={n_train} must lie in [100, {len(x)}] (the {dataset} training images).")
    x, y = x[:n_train], y[:n_train]
    y_poisoned, rows = flip_labels(y, budget, generator=torch.Generator().manual_seed(seed))
    if len(rows) == 0:
        raise ValueError(f"budget={budget} flips no label of {n_train} images; raise the budget.")
    x_val, y_val = load_split(dataset, "val")
    x_test, y_test = load_split(dataset, "test")
    n_test = len(x_test) if n_test is None else n_test
    if not (100 <= n_test <= len(x_test)):
        raise ValueError(f"n_test={n_test} must lie in [100, {len(x_test)}] (the {dataset} test images).")
    device = get_device(device)
    models_ = [train_cnn(dataset, x, labels, recipe=recipe, seed=seed, sizes=sizes, device=device, progress=progress)
               for labels in (y, y_poisoned)]
    return Scenario(dataset, budget, x, y, y_poisoned, rows, (x_test[:n_test], y_test[:n_test]),
                    (x_val[:n_val], y_val[:n_val]), recipe, seed, *models_, sizes=sizes)


def lira_shadows(scenario: Scenario, n_shadow: int, *, seed: int,
                 device: str | torch.device | None = None) -> list[nn.Module]:
    """Shadow CNNs for offline LiRA (`gsmu.mu.membership.Lira.offline`) on the scenario's flipped rows: each is
    trained like the poisoned model (its recipe, as many images, the same budget of flips) on a draw from the
    training split without the flipped rows — so no shadow sees a candidate (the flipped rows; the held-out
    candidates come from the test split). Cached like every CNN here; seeded by `seed`."""
    check_range("n_shadow", n_shadow, 2, 1000)
    x, y = load_split(scenario.dataset, "train")
    outside = torch.ones(len(x), dtype=torch.bool)
    outside[scenario.rows] = False  # rows index the first n_train images of the same split
    pool = outside.nonzero().reshape(-1)
    size = min(len(scenario.x), len(pool))
    gen = torch.Generator().manual_seed(seed)
    shadows = []
    for _ in range(n_shadow):
        pick = pool[torch.randperm(len(pool), generator=gen)[:size]]
        labels, _ = flip_labels(y[pick], scenario.budget, generator=gen)
        shadow_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        shadows.append(train_cnn(scenario.dataset, x[pick], labels, recipe=scenario.recipe, seed=shadow_seed,
                                 sizes=scenario.sizes, device=device))
    return shadows


def objective() -> Objective:
    """Summed cross-entropy without an L2 term: the CNNs are trained without weight decay, so the damping
    of the second-order solvers is the only regularization of H."""
    return Objective()


def _solver_stats(record: dict) -> dict:
    stats = record.get("solver") or []
    if not stats:
        return {}
    last = stats[-1]
    return {"iterations": sum(s["iterations"] for s in stats), "solver_residual": last.get("residual"),
            "negative_curvature": any(s.get("negative_curvature", False) for s in stats),
            "converged": all(s.get("converged", False) for s in stats),
            "effective_damping": last.get("effective_damping")}


def _retrain(scenario: Scenario, device: torch.device, cached: bool = False) -> tuple[nn.Module, dict]:
    # Same seed, recipe and data as the clean model: retraining reproduces it. Not through the cache unless
    # `cached` (then the clean model is returned and the wall time is NaN: time it with `retraining_seconds`).
    evals = scenario.recipe["epochs"] * len(scenario.x)
    if cached:
        return scenario.clean, {"seconds": float("nan"), "grad_evals": evals, "passes": cost.passes(gradients=evals)}
    start = time.perf_counter()
    torch.manual_seed(scenario.seed)
    model = scenario.build()
    train.fit_classifier(model, scenario.x, scenario.y_clean, seed=scenario.seed, device=device,
                         progress=False, **scenario.recipe)
    evals = scenario.recipe["epochs"] * len(scenario.x)
    return model, {"seconds": time.perf_counter() - start, "grad_evals": evals, "passes": cost.passes(gradients=evals)}


def sisa_ensemble(scenario: Scenario, shards: int, device: str | torch.device | None = None) -> unlearn.Sisa:
    """SISA on the poisoned data: `shards` CNNs (cached), majority vote. Unlearning through the returned
    ensemble retrains the affected shards for real (uncached), so its time is honest."""
    check_range("shards", shards, 1, len(scenario.x) // 100)
    device = get_device(device)
    cached = [True]

    def build() -> nn.Module:
        torch.manual_seed(scenario.seed)
        return scenario.build().to(device)

    def fit(model: nn.Module, shard: tuple[Tensor, Tensor]) -> None:
        if cached[0]:
            model.load_state_dict(train_cnn(scenario.dataset, *shard, recipe=scenario.recipe,
                                            seed=scenario.seed, sizes=scenario.sizes, device=device).state_dict())
        else:
            train.fit_classifier(model, *shard, seed=scenario.seed, device=device, progress=False,
                                 **scenario.recipe)
        model.eval()

    ensemble = unlearn.Sisa(build, fit, scenario.poisoned_data, shards, seed=scenario.seed)
    cached[0] = False
    return ensemble


METHODS = ("first-order", "second-order", "fine-tuning", "sisa", "retraining")
SUBSETS = ("all", "head", "last")


def _head_modules(model: nn.Module, subset: str) -> nn.Sequential:
    """The last layers as a stand-alone module whose parameter names match the full model's."""
    if isinstance(model, models.MnistCNN):
        layers = [("fc3", model.fc3), ("relu", nn.ReLU()), ("out", model.out)] if subset == "head" \
            else [("out", model.out)]
    elif isinstance(model, models.VGG):
        layers = [("classifier", model.classifier)]
    elif isinstance(model, models.AuthorsCifarCNN):
        # "head": the dense block after the conv features (fc, ReLU, BatchNorm in eval mode, out).
        layers = [("fc", model.fc), ("relu", nn.ReLU()), ("bn", model.bn), ("out", model.out)] \
            if subset == "head" else [("out", model.out)]
    else:
        raise ValueError(f"subset={subset!r} needs a MnistCNN, VGG or AuthorsCifarCNN; use subset='all' for "
                         f"{type(model).__name__}.")
    return nn.Sequential(OrderedDict(layers))


@torch.no_grad()
def head_inputs(model: nn.Module, head: nn.Sequential, x: Tensor, batch_size: int = 2048) -> Tensor:
    """What the first module of `head` receives inside `model` for the images `x` (a forward pre-hook)."""
    first, seen = next(iter(head.children())), []
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    device = device_of(model)
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device))
    finally:
        hook.remove()
    return torch.cat(seen)


def _body_outputs(scenario: Scenario, subset: str, head: nn.Sequential) -> Tensor:
    """What the frozen body feeds `head` for the training images, computed once per scenario and subset."""
    if subset not in scenario.head_cache:
        scenario.head_cache[subset] = head_inputs(scenario.poisoned, head, scenario.x)
    return scenario.head_cache[subset]


def _unlearn(model: nn.Module, request: unlearn.Request, data: tuple[Tensor, Tensor], method: str,
             device: torch.device, options: dict) -> tuple[nn.Module, dict]:
    if method == "first-order":
        return unlearn.first_order(model, objective(), request, device=device, **options)
    if method == "second-order":
        return unlearn.second_order(model, objective(), request, data, device=device, **options)
    return unlearn.fine_tune(model, objective(), request, device=device, **options)


def _update(scenario: Scenario, method: str, subset: str, device: torch.device,
            options: dict) -> tuple[nn.Module, dict]:
    if subset == "all":
        model, record = _unlearn(scenario.poisoned, scenario.request, scenario.poisoned_data, method, device, options)
        record["passes"] = _passes(scenario, method, subset, scenario.request, record)
        return model, record
    # The body is frozen, so its output is computed once and the update runs on the small head alone —
    # the same update as params=<head prefixes> on the full model, without a forward pass through the
    # body per Hessian-vector product. Those n forward passes are counted as n gradient evaluations.
    head = _head_modules(scenario.poisoned, subset)
    start = time.perf_counter()
    feats = _body_outputs(scenario, subset, head)
    body_seconds = time.perf_counter() - start
    request = unlearn.fix_labels(feats, scenario.y_poisoned, scenario.y_clean, scenario.rows,
                                 num_classes=NUM_CLASSES)
    if method != "fine-tuning":  # the features are small: one chunk per Hessian-vector product
        options = {"batch_size": len(feats), **options}
    preconditioned, built = "preconditioner_rank" in options, None  # built: the sketch, if this update made it
    if preconditioned:
        options, built = _preconditioned(scenario, subset, head, feats, options)
    start = time.perf_counter() - body_seconds
    new_head, record = _unlearn(head, request, (feats, scenario.y_poisoned), method, device, options)
    if preconditioned:  # the sketch's one-off cost, at the update that built it
        record["preconditioner_hvp_evals"] = built.hvp_evals if built else 0
        record["preconditioner_passes"] = cost.passes(hvps=record["preconditioner_hvp_evals"],
                                                      share=subset_share(scenario.poisoned, subset, scenario.x))
        record["preconditioner_seconds"] = built.seconds if built else 0.0
    model = copy.deepcopy(scenario.poisoned)
    unexpected = model.load_state_dict(new_head.state_dict(), strict=False).unexpected_keys
    assert not unexpected, f"head parameters {unexpected} do not match the model"
    record["passes"] = _passes(scenario, method, subset, request, record)
    record["grad_evals"] += len(scenario.x)
    record["seconds"] = time.perf_counter() - start  # the body's forward pass and the head update (not the sketch)
    return model, record


def _preconditioned(scenario: Scenario, subset: str, head: nn.Module, feats: Tensor,
                    options: dict) -> tuple[dict, Nystrom | None]:
    """Second-order options with CG preconditioned by a rank-r Nyström sketch of the head's H (`gsmu.mu.curvature`),
    sketched once per scenario, subset, curvature, subsample and seed and reused by every later update (a damping
    sweep, the other budgets' repairs): the amortized curvature for CNN heads. The sketch's one-off HVPs are
    reported apart (`preconditioner_hvp_evals`, `preconditioner_passes`, `preconditioner_seconds`, counted at the
    first update only), not in the per-update passes.
    Returns the options and the sketch when this call built it (None when it was reused)."""
    options = dict(options)
    rank, seed = options.pop("preconditioner_rank"), options.get("seed", 0)
    kind, rows = options.get("curvature", "exact"), options.get("hessian_rows")
    key = ("nystrom", subset, kind, rows, seed, rank)
    fresh = key not in scenario.head_cache
    if fresh:
        h = Curvature(head, objective(), ParamSpace(head), (feats, scenario.y_poisoned), kind=kind, rows=rows,
                      batch_size=len(feats), generator=torch.Generator().manual_seed(seed))
        scenario.head_cache[key] = Nystrom(h, h.dim, rank, generator=torch.Generator().manual_seed(seed))
    sketch = scenario.head_cache[key]
    damping = options.pop("damping", 0.0)
    options["solver"] = CG(damping=damping, tol=options.pop("tol", 1e-6), max_iter=options.pop("max_iter", 200),
                           preconditioner=sketch.with_damping(damping))
    return options, sketch if fresh else None


HEAD_PREFIXES = {"head": {models.MnistCNN: ["fc3", "out"], models.VGG: ["classifier"],
                          models.AuthorsCifarCNN: ["fc", "bn", "out"]},
                 "last": {models.MnistCNN: ["out"], models.VGG: ["classifier"], models.AuthorsCifarCNN: ["out"]}}


def subset_share(model: nn.Module, subset: str, example: Tensor) -> float:
    """Share of one full pass's arithmetic (MACs) in the parameters `subset` updates (1.0 for "all")."""
    if subset == "all":
        return 1.0
    prefixes = HEAD_PREFIXES[subset].get(type(model))
    if prefixes is None:
        raise ValueError(f"subset={subset!r} needs a MnistCNN, VGG or AuthorsCifarCNN, not {type(model).__name__}.")
    return cost.mac_share(model, example[:1], prefixes)


def _passes(scenario: Scenario, method: str, subset: str, request: unlearn.Request, record: dict) -> float:
    """Full-model pass equivalents of an update (`gsmu.mu.cost`): gradients of the request rows, the
    solver's Hessian-vector products, both over the updated subset only, and for a head update one forward
    pass of every training image through the frozen body."""
    share = subset_share(scenario.poisoned, subset, scenario.x)
    gradients = record["grad_evals"] if method == "fine-tuning" else 2 * len(request)
    hvps = record["grad_evals"] - 2 * len(request) if method == "second-order" else 0
    forwards = len(scenario.x) if subset != "all" else 0
    return cost.passes(gradients=gradients, hvps=hvps, share=share, forwards=forwards,
                       forward_share=1.0 - share)


def run_method(scenario: Scenario, method: str, *, subset: str = "all", label: str | None = None,
               sisa: unlearn.Sisa | None = None, device: str | torch.device | None = None,
               **options: Any) -> tuple[nn.Module | None, dict]:
    """Unlearn the scenario's flipped labels with `method` and score the result.

    `subset`: update all parameters, the "head" (fc3 + out of the MNIST CNN, the classifier of a VGG, fc + bn +
    out of the authors' CIFAR-10 CNN) or
    the "last" layer only. `options` go to the method: `unlearn.first_order` (tau, steps),
    `unlearn.second_order` (hessian, curvature, solver, damping, max_iter, hessian_rows, lissa_scale,
    lissa_iterations, step, steps, seed; on a head, `preconditioner_rank=r` runs CG preconditioned by a
    rank-r Nyström sketch of H, built once per scenario and reused), `unlearn.fine_tune` (lr, epochs,
    batch_size, seed). "sisa" needs the ensemble of `sisa_ensemble` (modified in place); "retraining" takes
    `cached=True` to reuse the clean model (it is what retraining produces) instead of training again. Returns
    the repaired model (None for SISA) and a row with test and validation accuracy, percent restored, gradient
    evaluations, seconds and solver statistics.
    """
    check_choice("method", method, METHODS)
    check_choice("subset", subset, SUBSETS)
    if "params" in options:
        raise ValueError("choose the parameters with subset='all'|'head'|'last', not params.")
    device = get_device(device)
    if method in ("first-order", "second-order", "fine-tuning"):
        model, record = _update(scenario, method, subset, device, options)
    elif method == "retraining":
        model, record = _retrain(scenario, device, cached=bool(options.pop("cached", False)))
    else:
        if sisa is None:
            raise ValueError("method='sisa' needs sisa=sisa_ensemble(scenario, shards).")
        affected = torch.unique(sisa.shard_of[scenario.rows])
        record = sisa.unlearn(scenario.request)
        record["grad_evals"] = scenario.recipe["epochs"] * int(torch.isin(sisa.shard_of, affected).sum())
        record["passes"] = cost.passes(gradients=record["grad_evals"])
        model = None
    if model is None:
        scorer = lambda split: sisa.accuracy(*getattr(scenario, split))
    elif subset == "all":
        scorer = _model_scorer(scenario, model)
    else:
        scorer = _head_scorer(scenario, model, subset)
    return model, _row(scenario, scorer, record, label or method, subset, options)


def _model_scorer(scenario: Scenario, model: nn.Module) -> Callable[[str], float]:
    return lambda split: unlearn.accuracy(model, *getattr(scenario, split))


def _head_scorer(scenario: Scenario, model: nn.Module, subset: str) -> Callable[[str], float]:
    """Accuracy of a model whose update changed only `subset`, on a split ("test" or "val"): its head applied to
    the frozen body's outputs, computed once per scenario — the same batches as a forward pass through the
    whole model (`train.eval_batch_size`), so the same logits bit for bit, without the body's forward per
    repaired model."""
    head = _head_modules(model, subset)
    device = device_of(model)

    def accuracy(split: str) -> float:
        key = ("scored inputs", subset, split)
        x, y = getattr(scenario, split)
        if key not in scenario.head_cache:
            body = scenario.poisoned.eval()  # the repaired model's body, unchanged
            scenario.head_cache[key] = head_inputs(body, _head_modules(body, subset), x,
                                                   batch_size=train.eval_batch_size(device))
        return train.accuracy(head, scenario.head_cache[key], y, device=device)
    return accuracy


def iterative_labels(steps: int) -> tuple[str, str]:
    """The table's names of the authors' iterative variants: first-order on all parameters, second-order on the head."""
    return f"first-order, {steps} steps", f"second-order CG, {steps} steps (head)"


def whole_model_label(steps: int) -> str:
    """The table's name of the whole-model second-order update in `steps` iterative steps."""
    return "second-order CG (whole model)" if steps == 1 else f"second-order CG, {steps} steps (whole model)"


def _row(scenario: Scenario, scorer: Callable[[str], float], record: dict, label: str, subset: str,
         options: dict) -> dict:
    """The table row of one repair; `scorer(split)` is the repaired model's accuracy on "test" or "val"."""
    acc = scorer("test")
    return {"method": label, "subset": subset, "budget": scenario.budget, "accuracy": acc,
            "val_accuracy": scorer("val"), "restored": scenario.restored(acc),
            "grad_evals": record["grad_evals"], "passes": record["passes"], "seconds": record["seconds"],
            **_solver_stats(record),
            **{k: record[k] for k in ("preconditioner_hvp_evals", "preconditioner_passes", "preconditioner_seconds")
               if k in record},
            **{k: v for k, v in options.items() if isinstance(v, (int, float, str))}}


@dataclass
class Sweep:
    """One method tried at several values of a hyper-parameter: the rows and the repaired models, in the same
    order (None for SISA), so a later check can reuse the chosen model instead of repeating the update."""
    rows: list[dict]
    models: list[nn.Module | None]

    def best(self) -> tuple[nn.Module | None, dict]:
        """(model, row) with the highest validation accuracy — hyper-parameters chosen without the test set
        (the first of equals)."""
        i = max(range(len(self.rows)), key=lambda k: self.rows[k]["val_accuracy"])
        return self.models[i], self.rows[i]


def first_order_sweep(scenario: Scenario, taus: list[float], *, label: str = "first-order",
                      device: str | torch.device | None = None) -> Sweep:
    """The first-order update θ − τG (all parameters) for every τ in `taus`, from ONE gradient
    difference G (it does not depend on τ; `run_method` per τ would recompute it). Each row reports the
    cost of one update: G plus the step."""
    if not taus or min(taus) <= 0:
        raise ValueError(f"taus={taus!r} must be a non-empty list of unlearning rates > 0.")
    base = copy.deepcopy(scenario.poisoned).to(get_device(device))
    space, request = ParamSpace(base), scenario.request
    start = time.perf_counter()
    g = gradient_difference(base, objective(), space, request.z, request.z_tilde)
    seconds = time.perf_counter() - start
    record = {"grad_evals": 2 * len(request), "passes": cost.passes(gradients=2 * len(request)), "seconds": seconds}
    done = Sweep([], [])
    for tau in taus:
        model = copy.deepcopy(base)
        space.assign(model, space.flat(base) - tau * g)
        done.models.append(model)
        done.rows.append(_row(scenario, _model_scorer(scenario, model), record, label, "all",
                              {"tau": tau}))
    return done


def sweep(scenario: Scenario, method: str, name: str, values: list, *, label: str | None = None,
          device: str | torch.device | None = None, **options: Any) -> Sweep:
    """`run_method` once per value of the option `name` (e.g. tau, damping, lr)."""
    if not values:
        raise ValueError(f"values for {name!r} is empty: give at least one.")
    runs = [run_method(scenario, method, label=label, device=device, **{**options, name: v}) for v in values]
    return Sweep([row for _, row in runs], [model for model, _ in runs])


def curvature_scale(scenario: Scenario, *, subset: str = "head", curvature: str = "gauss-newton",
                    hessian_rows: int | None = None, iterations: int = 30, seed: int = 0) -> float:
    """The largest eigenvalue of H (summed loss over the poisoned data, or a subsample of `hessian_rows`)
    over `subset` — the yardstick that damping values are compared against."""
    check_choice("subset", subset, SUBSETS)
    model, data = scenario.poisoned, scenario.poisoned_data
    if subset != "all":
        model = _head_modules(model, subset)
        data = (_body_outputs(scenario, subset, model), scenario.y_poisoned)
    h = Curvature(model, objective(), ParamSpace(model), data, kind=curvature, rows=hessian_rows,
                  generator=torch.Generator().manual_seed(seed))
    return top_eigenvalue(h, h.dim, iterations=iterations, generator=torch.Generator().manual_seed(seed),
                          device=device_of(model), dtype=h.theta.dtype)


def retraining_seconds(scenario: Scenario, *, repeats: int = 3, device: str | torch.device | None = None) -> float:
    """Wall time of retraining, estimated as `epochs` × the median of `repeats` timed single epochs (same
    recipe and data as retraining; one epoch per repeat keeps the measurement affordable on a CPU)."""
    device = get_device(device)
    one_epoch = {**scenario.recipe, "epochs": 1}

    def epoch() -> None:
        torch.manual_seed(scenario.seed)
        train.fit_classifier(scenario.build(), scenario.x, scenario.y_clean, seed=scenario.seed,
                             device=device, progress=False, **one_epoch)
    return scenario.recipe["epochs"] * cost.median_seconds(epoch, repeats)
