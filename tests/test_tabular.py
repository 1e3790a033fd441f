"""The MU authors' tabular data (gsmu.base.tabular) and the feature-unlearning comparison on it
(gsmu.mu.authors_features): shapes and class counts against independent reads of the raw files, the
authors' one-hot encoding, checksums, and the second-order update against an independent Newton step."""
import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from gsmu.base import data, tabular
from gsmu.mu import authors_features as af
from gsmu.mu import unlearn

try:
    MIRROR = data.mirror_dir()
    HAVE = (MIRROR / "unlearning-authors" / "Adult" / "adult.data").is_file()
except FileNotFoundError:
    MIRROR, HAVE = None, False
needs_mirror = pytest.mark.skipif(not HAVE, reason="the offline data mirror (REPRO_DATA_MIRROR) is absent")
FOLDER = "unlearning-authors"


def _raw_adult(name: str) -> pd.DataFrame:
    lines = [line for line in (MIRROR / FOLDER / "Adult" / name).read_text().splitlines()
             if line.strip() and not line.startswith("|")]
    return pd.DataFrame([[v.strip() for v in line.split(",")] for line in lines], columns=list(tabular.ADULT_COLUMNS))


@needs_mirror
def test_adult_shapes_classes_and_one_hot_columns():
    adult = tabular.load_adult()
    train, test = _raw_adult("adult.data"), _raw_adult("adult.test")
    assert adult.x_train.shape[0] == len(train) == 32561 and adult.x_test.shape[0] == len(test) == 16281
    assert adult.y_train.sum() == (train["income"] == ">50K").sum()
    assert adult.y_test.sum() == (test["income"] == ">50K.").sum()
    categorical = [c for c in tabular.ADULT_COLUMNS if c not in tabular.ADULT_NUMERIC + ("fnlwgt", "education", "income")]
    levels = {c: train[c][train[c] != "?"].value_counts() for c in categorical}
    assert adult.x_train.shape[1] == 5 + sum(len(v) - 1 for v in levels.values()) == 81
    names = adult.names
    for column, counts in levels.items():
        cols = [names.index(f"{column}_{v}") for v in counts.index[1:]]
        assert f"{column}_{counts.index[0]}" not in names  # the most frequent category is dropped
        block = adult.x_train[:, cols]
        values = train[column].replace("?", counts.index[0] if column in tabular.ADULT_INCOMPLETE else "?")
        np.testing.assert_array_equal(block.sum(1) == 0, (values == counts.index[0]).to_numpy())
        for j, v in enumerate(counts.index[1:]):
            np.testing.assert_array_equal(block[:, j] == 1, (values == v).to_numpy())
    numeric = adult.x_train[:, :5]
    np.testing.assert_allclose(np.linalg.norm(numeric, axis=1), 1.0, atol=1e-12)
    assert all(name in names for name in adult.relevant) and len(adult.relevant) == 15


@needs_mirror
def test_diabetes_split_and_scaling():
    raw = pd.read_csv(MIRROR / FOLDER / "Diabetes" / "diabetes.csv")
    d = tabular.load_diabetes(0)
    assert d.x_train.shape == (614, 8) and d.x_test.shape == (154, 8)
    assert d.y_train.sum() + d.y_test.sum() == raw["Outcome"].sum() == 268
    np.testing.assert_allclose(d.x_train.min(0), 0.0) and np.testing.assert_allclose(d.x_train.max(0), 1.0)
    s = tabular.load_diabetes(0, scaling="standard")
    np.testing.assert_allclose(s.x_train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(s.y_train, d.y_train)  # same seed, same split
    assert not np.array_equal(tabular.load_diabetes(1).y_train, d.y_train)
    assert d.relevant == ["Pregnancies", "BMI", "Age"] and d.relevant_columns == [0, 5, 7]
    with pytest.raises(ValueError, match="scaling"):
        tabular.load_diabetes(0, scaling="robust")


@needs_mirror
def test_drebin_splits_against_the_label_files():
    d = tabular.load_drebin_splits()
    assert d.x_train.shape == (39380, 2081) and d.x_valid.shape == (7384, 2081) and d.x_test.shape == (9846, 2081)
    y = {s: np.load(MIRROR / FOLDER / "Drebin" / f"y_{s}.npy", allow_pickle=False) for s in ("train", "valid", "test")}
    assert d.y_train.sum() == (y["train"] > 0).sum() == 1778 and d.y_test.sum() == (y["test"] > 0).sum() == 464
    assert d.y_valid.sum() == y["valid"][:, 1].sum()
    # The authors' list: every feature whose name holds "url" (1,196 url:: features and activity::.url.URL).
    assert len(d.relevant) == 1197 and all("url" in n.lower() for n in d.relevant)
    assert sum(n.startswith("url::") for n in d.relevant) == 1196


def _copy_mirror(tmp_path, files):
    sums = []
    for rel in files:
        src, dst = MIRROR / FOLDER / rel, tmp_path / FOLDER / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        sums.append(f"{hashlib.sha256(src.read_bytes()).hexdigest()}  ./{FOLDER}/{rel}")
    (tmp_path / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return tmp_path


@needs_mirror
def test_corrupted_or_missing_mirror_files_raise_clear_errors(tmp_path):
    mirror = _copy_mirror(tmp_path, ["Diabetes/diabetes.csv", "Diabetes/relevant_features.txt"])
    assert tabular.load_diabetes(0, mirror=mirror).x_train.shape == (614, 8)
    path = mirror / FOLDER / "Diabetes" / "diabetes.csv"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256"):
        tabular.load_diabetes(0, mirror=mirror)
    with pytest.raises(FileNotFoundError, match="REPRO_DATA_MIRROR.*https://"):
        tabular.load_adult(mirror=mirror)


def test_missing_mirror_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="REPRO_DATA_MIRROR"):
        tabular.relevant_features("Diabetes")
    with pytest.raises(ValueError, match="name"):
        tabular.relevant_features("Enron2")


def _newton_numpy(theta, x, y, l2, g):
    """θ − H⁻¹g with H = X̃ᵀ diag(p(1−p)) X̃ + λI of the logistic loss over (x, y), X̃ = [x, 1], in numpy."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    p = 1 / (1 + np.exp(-xb @ theta))
    h = xb.T @ (xb * (p * (1 - p))[:, None]) + l2 * np.eye(len(theta))
    return theta - np.linalg.solve(h, g)


def _grad_numpy(theta, x, y, l2):
    xb = np.hstack([x, np.ones((len(x), 1))])
    return xb.T @ (1 / (1 + np.exp(-xb @ theta)) - y) + l2 * theta


def _flat(model):
    return torch.cat([model.linear.weight.detach().reshape(-1), model.linear.bias.detach()]).numpy()


@needs_mirror
def test_second_order_matches_an_independent_newton_step_and_retraining():
    task = af.prepare("Diabetes", 0, l2=1.0, scaling="standard")
    x, y = task.train[0].numpy(), task.train[1].numpy().astype(float)
    theta = _flat(task.model)
    assert np.linalg.norm(_grad_numpy(theta, x, y, 1.0)) < 1e-6  # trained to the optimum
    job = af.feature_request(task, 3, torch.Generator().manual_seed(0))
    xt = x.copy()
    xt[:, job.features] = 0.0
    g = _grad_numpy(theta, xt, y, 1.0) - _grad_numpy(theta, x, y, 1.0)  # G over the affected rows (others cancel)
    rows, models = af.run_methods(task, job, taus=[1e-3, 1e-2], fine_tune_lr=0.1, ensemble=None, seed=0)
    np.testing.assert_allclose(_flat(models["second-order (D̃)"]), _newton_numpy(theta, xt, y, 1.0, g), atol=1e-9)
    np.testing.assert_allclose(_flat(models["second-order (D)"]), _newton_numpy(theta, x, y, 1.0, g), atol=1e-9)
    # A small request (features zeroed in 5 rows): one Newton step lands next to exact retraining.
    small = unlearn.remove_features(*task.train, job.features, rows=list(range(5)))
    corrected = unlearn.apply_request(task.train, small)
    retrained, _ = unlearn.retrain(task.model, task.objective, corrected)
    xs = corrected[0].numpy()
    step = _newton_numpy(theta, xs, y, 1.0, _grad_numpy(theta, xs, y, 1.0))
    exact = _flat(retrained)
    assert np.linalg.norm(_grad_numpy(exact, xs, y, 1.0)) < 1e-6
    assert np.linalg.norm(step - exact) <= 0.02 * np.linalg.norm(theta - exact)
    updated, _ = unlearn.second_order(task.model, task.objective, small, task.train, solver="exact",
                                      settings=unlearn.SecondOrder(hessian="corrected"))
    np.testing.assert_allclose(_flat(updated), step, atol=1e-9)
    table = pd.DataFrame(rows).set_index("method")
    assert table.loc["retraining", "distance"] == 0 and table.loc["occlusion", "distance"] == pytest.approx(1.0)


@needs_mirror
def test_feature_counts_and_bad_inputs():
    task = af.prepare("Diabetes", 0, l2=1.0)
    assert af.feature_counts(task, (10, 50, 100)) == [3]
    assert af.feature_counts(task, (1, 2, 10)) == [1, 2, 3]
    with pytest.raises(ValueError, match="name"):
        af.prepare("Adlut", 0, l2=1.0)
    with pytest.raises(ValueError, match="l2"):
        af.prepare("Diabetes", 0, l2=-1.0)
    with pytest.raises(ValueError, match="k"):
        af.feature_request(task, 0, torch.Generator())
