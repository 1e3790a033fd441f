"""Tests of `python -m gsmu.forget`: a small feature-removal request on Spambase certified end to end, the
update checked against retraining, svmlight input with row removal, and one clear message per bad input."""
import json

import numpy as np
import pytest
import torch

from gsmu import forget
from gsmu.base import data, models
from gsmu.mu import unlearn
from gsmu.mu.influence import Objective, binary_cross_entropy_sum


@pytest.fixture(scope="module")
def spam(tmp_path_factory):
    """600 Spambase rows (log-scaled as in notebook 06) as .npz; the donor features; 8 rows that use them."""
    root = tmp_path_factory.mktemp("spam")
    X, y, names = data.load_spambase()
    pick = np.random.default_rng(0).permutation(len(X))[:600]
    X, y = X[pick], y[pick]
    X = np.log1p(X) / np.log1p(X).max(0).clip(min=1e-12)
    np.savez(root / "train.npz", X=X, y=y)
    donor = [names.index(w) for w in data.DONOR_FEATURES]
    rows = np.nonzero((X[:, donor] != 0).any(1))[0][:8]
    spec = f"features:{','.join(map(str, donor))};rows:{','.join(map(str, rows))}"
    return root, X, y, donor, rows, spec


def cli(argv, capsys):
    code = forget.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_small_request_on_spambase_is_certified(spam, tmp_path, capsys):
    root, X, y, donor, rows, spec = spam
    # 1) a model trained without noise: the update is good but cannot be certified; σ needed is reported
    code, out, err = cli(["--model", tmp_path / "plain.pt", "--data", root / "train.npz", "--forget", spec,
                          "--train", "--certify", "0.1,0.01", "--out", tmp_path / "o0"], capsys)
    assert code == 0, err
    r0 = json.loads((tmp_path / "o0" / "unlearning.json").read_text())
    assert r0["request"]["n_rows"] == len(rows) and r0["request"]["features"] == sorted(donor)
    assert r0["residual"] < 0.1 * r0["residual_before"]  # the second-order step lands near the new optimum
    cert0 = r0["certification"]
    assert not cert0["certified"] and "--sigma" in cert0["verdict"]
    c = np.sqrt(2 * np.log(1.5 / 0.01))
    assert cert0["sigma_needed"] == pytest.approx(c * r0["residual"] / 0.1)
    # oracle: the updated weights are close to retraining on the corrected data (exact L-BFGS fit)
    x_t, y_t = torch.tensor(X), torch.tensor(y)
    corrected = unlearn.apply_request((x_t, y_t), unlearn.remove_features(x_t, y_t, donor, rows=rows))
    objective = Objective(criterion=binary_cross_entropy_sum, l2=1.0)
    retrained = models.LogisticRegression(X.shape[1]).double()
    unlearn.fit_lbfgs(retrained, objective, corrected)
    updated = models.LogisticRegression(X.shape[1]).double()
    updated.load_state_dict(torch.load(tmp_path / "o0" / "model.pt", weights_only=True)["state_dict"])
    original = models.LogisticRegression(X.shape[1]).double()
    original.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True)["state_dict"])
    assert unlearn.param_distance(updated, retrained) < 0.1 * unlearn.param_distance(original, retrained)
    # 2) trained with loss perturbation σ = 3 × the σ needed: the same request is certified
    sigma = 3 * cert0["sigma_needed"]
    code, out, err = cli(["--model", tmp_path / "noisy.pt", "--data", root / "train.npz", "--forget", spec,
                          "--train", "--sigma", sigma, "--certify", "0.1,0.01", "--out", tmp_path / "o1"], capsys)
    assert code == 0, err
    cert1 = json.loads((tmp_path / "o1" / "unlearning.json").read_text())["certification"]
    assert cert1["certified"] and cert1["sigma_model"] == pytest.approx(sigma)
    assert cert1["sigma_needed"] <= sigma and "certified:" in out
    saved = torch.load(tmp_path / "o1" / "model.pt", weights_only=True)
    assert saved["sigma"] == pytest.approx(sigma) and saved["perturbation"].shape == (X.shape[1] + 1,)


def test_svmlight_rows_removed(tmp_path, capsys):
    gen = np.random.default_rng(1)
    X = gen.normal(size=(400, 5))
    y = np.where(X @ np.array([1.0, -1.0, 0.5, 0.0, 0.0]) + 0.3 * gen.normal(size=400) > 0, 1, -1)
    with open(tmp_path / "d.svm", "w") as f:
        for xi, yi in zip(X, y):
            f.write(f"{yi:+d} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(xi)) + "\n")
    code, out, err = cli(["--model", tmp_path / "m.pt", "--data", tmp_path / "d.svm", "--forget", "rows:0-4,10",
                          "--train", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "unlearning.json").read_text())
    assert r["request"] == {"kind": "remove rows", "rows": [0, 1, 2, 3, 4, 10], "n_rows": 6, "features": None}
    assert r["data"]["rows"] == 400 and r["residual"] < 0.1 * r["residual_before"]


@pytest.mark.parametrize("argv,message", [
    (["--forget", "rows:1,,x"], "'' is not a non-negative index"),
    (["--forget", "rows:5-2"], "'5-2' is not a non-negative index"),
    (["--forget", "lines:1,2"], "write rows:1,5,9"),
    (["--forget", "rows:"], "write rows:1,5,9"),
    (["--forget", "rows:1;rows:2"], "rows given twice"),
    (["--forget", "rows:600"], "row 600 out of range; --data has 600 rows"),
    (["--forget", "features:57"], "feature 57 out of range; --data has 57 features"),
    (["--certify", "0.1"], "--certify '0.1'"),
    (["--certify", "0.1,2"], "0 < delta < 1"),
    (["--method", "first-order"], "needs --tau"),
])
def test_bad_requests(spam, tmp_path, capsys, argv, message):
    root, *_ , spec = spam
    base = {"--model": tmp_path / "m.pt", "--data": root / "train.npz", "--forget": "rows:1", "--out": tmp_path / "o"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code, _, err = cli([a for kv in base.items() for a in kv] + ["--train"], capsys)
    assert code == 2 and message in err, err


def test_shape_mismatch_and_bad_files(spam, tmp_path, capsys):
    root, *_ = spam
    torch.save(models.LogisticRegression(10).double().state_dict(), tmp_path / "small.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("junk")
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 2)))
    (tmp_path / "d.csv").write_text("1,2\n")
    cases = [("small.pt", "train.npz", "shape mismatch: --model has weights of shape (1, 10)"),
             ("other.pt", "train.npz", "expected a logistic-regression state dict"),
             ("text.pt", "train.npz", "weights_only=True"),
             ("missing.pt", "train.npz", "no such file"),
             ("small.pt", "noy.npz", "needs arrays 'X' and 'y'"),
             ("small.pt", "d.csv", "use an .npz file")]
    for model, data_file, message in cases:
        folder = root if data_file == "train.npz" else tmp_path
        code, _, err = cli(["--model", tmp_path / model, "--data", folder / data_file, "--forget", "rows:1",
                            "--out", tmp_path / "o"], capsys)
        assert code == 2 and message in err, (model, data_file, err)


def test_parse_forget():
    assert forget.parse_forget("features:3,7;rows:0-2") == {"features": [3, 7], "rows": [0, 1, 2]}
    assert forget.parse_forget("rows:9,1,1") == {"rows": [1, 9]}
    for bad in ("", ";", "rows", "rows:-1", "features:a"):
        with pytest.raises(forget.ForgetError, match="--forget"):
            forget.parse_forget(bad)
