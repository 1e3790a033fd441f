"""The MU authors' tabular data (Drebin, Adult, Diabetes) from the offline data mirror, as they vectorized it.

*Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023), §6.1 unlearns features from
logistic regressions on Enron, Drebin, Adult and Diabetes; the authors publish the data files and the
features they unlearn (`relevant_features.txt`) with their code (repository alewarne/MachineUnlearning,
folder `train_test_data/`). The mirror (`gsmu.base.data.mirror_dir`: `$REPRO_DATA_MIRROR`, else a
`shared/data` folder beside the checkout) holds them under `unlearning-authors/`; every file is checked
against the mirror's `SHA256SUMS` before use.

- `load_drebin_splits`: the authors' Drebin train / validation / test count matrices (scipy CSR).
- `load_adult`: UCI Adult, encoded as the authors did: the five numeric columns standardized and then
  scaled to unit L2 norm per row; the categorical ones one-hot encoded with categories ordered by their
  training frequency and the most frequent one dropped (so `race_White` is the zero vector and the
  unlearned `race_Black` … columns are the minorities); missing work class / occupation / country imputed
  with the training mode; `fnlwgt` and `education` dropped. Difference: the authors fitted the scaler on
  the test file separately; here it is fitted on the training file and applied to both.
- `load_diabetes`: the Pima diabetes csv (768 rows), split 80/20 at random by `seed`, min-max scaled as
  the authors (fitted on the training rows only) or standardized.
- `relevant_features`: the names the authors unlearn from each data set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import _mirror_file, mirror_dir
from .runtime import check_choice, check_range

ONLINE = "https://github.com/alewarne/MachineUnlearning/tree/main/train_test_data"
UCI_ADULT = "https://archive.ics.uci.edu/dataset/2/adult"
DATASETS = ("Drebin", "Adult", "Diabetes")
ADULT_COLUMNS = ("age", "workClass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
                 "native-country", "income")
ADULT_NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_INCOMPLETE = ("workClass", "occupation", "native-country")


def _file(relative: str, mirror: str | Path | None) -> Path:
    """A verified mirror file, or a FileNotFoundError that says how to provide it (offline and online)."""
    try:
        base = Path(mirror) if mirror is not None else mirror_dir()
        return _mirror_file(base, f"unlearning-authors/{relative}")
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e} Set $REPRO_DATA_MIRROR to a folder holding unlearning-authors/{relative} (with its SHA256SUMS), "
            f"or download the MU authors' files from {ONLINE} (Adult: {UCI_ADULT}) into "
            f"<mirror>/unlearning-authors/.") from e


def relevant_features(name: str, mirror: str | Path | None = None) -> list[str]:
    """The feature names the authors unlearn from data set `name` (their `relevant_features.txt`)."""
    check_choice("name", name, DATASETS)
    text = _file(f"{name}/relevant_features.txt", mirror).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Tabular:
    """One data set: float64 matrices (dense ndarray, or scipy CSR for Drebin), labels in {0, 1}, column
    names and the authors' features to unlearn (`relevant`, names; `relevant_columns`, their indices)."""
    name: str
    x_train: object
    y_train: np.ndarray
    x_test: object
    y_test: np.ndarray
    names: list[str]
    relevant: list[str]
    x_valid: object | None = None
    y_valid: np.ndarray | None = None

    @property
    def relevant_columns(self) -> list[int]:
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in self.relevant if n not in index]
        if missing:
            raise ValueError(f"{self.name}: relevant features {missing[:5]} are not columns of the data.")
        return [index[n] for n in self.relevant]


def load_drebin_splits(mirror: str | Path | None = None) -> Tabular:
    """The authors' Drebin split (39,380 / 7,384 / 9,846 apps × 2,081 binary-count features, scipy CSR float64,
    1 = malware) with the URL features they unlearn; the validation labels are stored one-hot."""
    import scipy.sparse
    out = {}
    for split in ("train", "valid", "test"):
        x = scipy.sparse.load_npz(_file(f"Drebin/x_{split}.npz", mirror)).tocsr().astype(np.float64)
        y = np.load(_file(f"Drebin/y_{split}.npy", mirror), allow_pickle=False)
        y = y.argmax(1) if y.ndim == 2 else (y > 0)
        out[split] = (x, y.astype(np.int64))
    names = json.loads(_file("Drebin/vocabulary.json", mirror).read_text())
    return Tabular("Drebin", *out["train"], *out["test"], list(names), relevant_features("Drebin", mirror),
                   *out["valid"])


def _read_adult(path: Path, skip: int):
    import pandas as pd
    df = pd.read_csv(path, names=list(ADULT_COLUMNS), sep=",", skipinitialspace=True, na_values=["?"],
                     skiprows=skip)
    df = df.dropna(how="all")
    income = df.pop("income").astype(str).str.rstrip(".")
    return df.drop(columns=["fnlwgt", "education"]), (income == ">50K").to_numpy().astype(np.int64)


def adult_encoding(train, test) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The authors' Adult encoding of two data frames (fitted on `train`): numeric columns standardized, then
    each row's numeric part scaled to unit L2 norm; categoricals one-hot over the training categories in
    order of frequency, the most frequent dropped; missing values of incomplete columns = training mode."""
    numeric = [train[c].to_numpy(np.float64) for c in ADULT_NUMERIC]
    mean, sd = np.array([c.mean() for c in numeric]), np.array([c.std() for c in numeric])

    def encode(df) -> np.ndarray:
        z = (df[list(ADULT_NUMERIC)].to_numpy(np.float64) - mean) / np.where(sd > 0, sd, 1.0)
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        blocks = [z / np.where(norm > 0, norm, 1.0)]
        for column in categorical:
            values = df[column].fillna(fill[column]).to_numpy() if column in fill else df[column].to_numpy()
            blocks.append((values[:, None] == np.array(order[column][1:], dtype=object)[None, :]).astype(np.float64))
        return np.hstack(blocks)

    categorical = [c for c in train.columns if c not in ADULT_NUMERIC]
    fill = {c: train[c].value_counts().index[0] for c in ADULT_INCOMPLETE}
    order = {c: train[c].value_counts().index.tolist() for c in categorical}
    names = list(ADULT_NUMERIC) + [f"{c}_{v}" for c in categorical for v in order[c][1:]]
    return encode(train), encode(test), names


def load_adult(mirror: str | Path | None = None) -> Tabular:
    """UCI Adult (adult.data: 32,561 rows for training; adult.test: 16,281 for testing), encoded as the
    authors did (`adult_encoding`; 81 columns), 1 = income > 50K, with the features they unlearn."""
    train, y_train = _read_adult(_file("Adult/adult.data", mirror), 0)
    test, y_test = _read_adult(_file("Adult/adult.test", mirror), 1)
    x_train, x_test, names = adult_encoding(train, test)
    return Tabular("Adult", x_train, y_train, x_test, y_test, names, relevant_features("Adult", mirror))


SCALINGS = ("minmax", "standard")


def load_diabetes(seed: int = 0, *, test_share: float = 0.2, scaling: str = "minmax",
                  mirror: str | Path | None = None) -> Tabular:
    """Pima diabetes (768 women, 8 clinical features, 1 = diabetes), split at random by `seed` (the authors:
    80/20), scaled on the training rows: "minmax" to [0, 1] as the authors (zero = the training minimum),
    or "standard" (zero = the training mean)."""
    import pandas as pd
    check_range("test_share", test_share, 0.05, 0.95)
    check_choice("scaling", scaling, SCALINGS)
    df = pd.read_csv(_file("Diabetes/diabetes.csv", mirror))
    x, y = df.iloc[:, :-1].to_numpy(np.float64), df.iloc[:, -1].to_numpy().astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(test_share * len(x)))
    tr, te = order[:cut], order[cut:]
    if scaling == "minmax":
        low, span = x[tr].min(0), x[tr].max(0) - x[tr].min(0)
    else:
        low, span = x[tr].mean(0), x[tr].std(0)
    x = (x - low) / np.where(span > 0, span, 1.0)
    return Tabular("Diabetes", x[tr], y[tr], x[te], y[te], list(df.columns[:-1]),
                   relevant_features("Diabetes", mirror))


def load(name: str, seed: int = 0, mirror: str | Path | None = None, **options) -> Tabular:
    """`load_drebin_splits`, `load_adult` or `load_diabetes(seed, **options)` by name."""
    check_choice("name", name, DATASETS)
    if name == "Drebin":
        return load_drebin_splits(mirror)
    if name == "Adult":
        return load_adult(mirror)
    return load_diabetes(seed, mirror=mirror, **options)
