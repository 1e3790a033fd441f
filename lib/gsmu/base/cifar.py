"""CIFAR-10 (Krizhevsky 2009), offline first: the data of the Gradient Slingshots VGG experiments (GS paper, Sec. 5).

Offline source: the data mirror (`data.mirror_dir()`, set by `$REPRO_DATA_MIRROR`) holds
`cifar10-jpeg/cifar10-jpeg-q75.tar.xz`, all 60,000 images re-encoded as JPEG at quality 75
(`train/<class>/NNNN.jpg`, `test/<class>/NNNN.jpg`). The archive is verified against the mirror's SHA256SUMS
before anything is read, each split is decoded once with Pillow and cached as uint8 arrays in the data cache
(`<cache>/data/cifar10-jpeg-q75-<archive digest>-<split>.npz`, with its own SHA-256 beside it), under a file
lock so parallel first runs decode once. Online source (no mirror): torchvision's `CIFAR10(download=True)`,
the original PNG-exact pixels. Every loader returns the name of its source, so results can say which one
they were computed on: JPEG-75 artefacts cost a little accuracy against the original data.
Class order is torchvision's (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from . import data
from .runtime import atomic_write, cache_dir, check_choice, file_lock, sha256_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE = "cifar10-jpeg/cifar10-jpeg-q75.tar.xz"
SIZES = {"train": 50_000, "test": 10_000}
SOURCE_JPEG = "CIFAR-10 JPEG-75 copy"
SOURCE_TORCHVISION = "torchvision CIFAR-10"


class CifarError(data.DataError):
    """CIFAR-10 cannot be loaded: the mirror copy is corrupted, or neither source is reachable."""


def decode_jpeg(raw: bytes) -> np.ndarray:
    """One JPEG file's bytes as an H×W×3 uint8 array (Pillow)."""
    from PIL import Image
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_split(archive: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of `split` in the archive, ordered by (class, file name): (N×3×32×32 uint8, N int64)."""
    found: dict[tuple[int, str], np.ndarray] = {}
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split or not parts[2].endswith(".jpg"):
                continue
            if parts[1] not in CLASSES:
                raise CifarError(f"{archive}: member {member.name} names an unknown class {parts[1]!r}.")
            found[CLASSES.index(parts[1]), parts[2]] = decode_jpeg(tar.extractfile(member).read())
    if len(found) != SIZES[split]:
        raise CifarError(f"{archive}: the {split} split has {len(found)} images, expected {SIZES[split]}.")
    keys = sorted(found)
    x = np.stack([found[k] for k in keys]).transpose(0, 3, 1, 2).copy()
    y = np.array([k[0] for k in keys], dtype=np.int64)
    if x.shape[1:] != (3, 32, 32):
        raise CifarError(f"{archive}: images of shape {x.shape[1:]}, expected 3×32×32.")
    return x, y


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays if the file and its checksum agree, else None."""
    sidecar = path.with_name(path.name + ".sha256")
    if not (path.is_file() and sidecar.is_file()) or sidecar.read_text().strip() != sha256_file(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"]


def _jpeg_split(split: str, mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode (once) and cache `split` of the mirror's JPEG copy; the archive is verified first."""
    try:
        archive = data._mirror_file(mirror, ARCHIVE)  # raises ValueError on a SHA-256 mismatch
    except ValueError as e:
        raise CifarError(f"{e} Replace it with a good copy (SHA256SUMS lists its digest); nothing was decoded.") from e
    digest = sha256_file(archive)
    path = cache_dir("data") / f"cifar10-jpeg-q75-{digest[:16]}-{split}.npz"
    cached = _read_cache(path)
    if cached is not None:
        return cached
    with file_lock(path):  # one process decodes; the others wait here and then read its cache
        cached = _read_cache(path)
        if cached is not None:
            return cached
        x, y = _decode_split(archive, split)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, x=x, y=y)
        atomic_write(path, write)
        atomic_write(path.with_name(path.name + ".sha256"), sha256_file(path) + "\n")
    return x, y


def load_cifar10(split: str, dtype: str = "float32", mirror: str | Path | None = None):
    """CIFAR-10 `split` ('train' 50k, 'test' 10k) as (x N×3×32×32, y int64 tensor, source).

    x is float32 in [0, 1] (`dtype` 'float32') or uint8 (`dtype` 'uint8'). Offline from the mirror's JPEG-75
    copy when a mirror is found (`mirror`, else `$REPRO_DATA_MIRROR`, else the default mirror folder),
    otherwise torchvision's download. `source` is `SOURCE_JPEG` or `SOURCE_TORCHVISION`.
    """
    import torch
    check_choice("split", split, tuple(SIZES))
    check_choice("dtype", dtype, ("float32", "uint8"))
    try:
        base = Path(mirror) if mirror is not None else data.mirror_dir()
        if not (base / ARCHIVE).is_file():
            raise FileNotFoundError(f"{base / ARCHIVE} does not exist")
    except FileNotFoundError as no_mirror:
        try:
            x, y = data.load_cifar10(split)
        except data.DataError as e:
            raise CifarError(f"CIFAR-10: no offline copy ({no_mirror}) and the online fallback failed. Set "
                             f"$REPRO_DATA_MIRROR to the folder holding {ARCHIVE} (with its SHA256SUMS), or run "
                             f"where torchvision's CIFAR10(download=True) can reach the internet. ({e})") from e
        x = x if dtype == "float32" else (x * 255).round().to(torch.uint8)
        return x, y, SOURCE_TORCHVISION
    xs, ys = _jpeg_split(split, base)
    x = torch.from_numpy(xs)
    return (x.float() / 255.0 if dtype == "float32" else x), torch.from_numpy(ys), SOURCE_JPEG


def shuffled(split: str, seed: int = 0):
    """(x float32, y) of `split` in a fixed random order — the JPEG copy is ordered by class, so a prefix
    or a train/validation cut of it would hold only some classes; torchvision's download is mixed already."""
    import torch
    x, y, _ = load_cifar10(split)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


def subset(y, n: int, seed: int):
    """Indices of a class-balanced random subset of n rows (n/10 per class; all rows when n ≥ len(y)), sorted."""
    import torch
    from .runtime import check_int
    check_int("n", n, 10)
    if n >= len(y):
        return torch.arange(len(y))
    gen = torch.Generator().manual_seed(seed)
    per_class = n // 10
    picks = [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:per_class]]
             for c in range(10)]
    return torch.cat(picks).sort().values


def vgg_model(arch: str, width: int, recipe: dict, seed: int = 0, n_train: int = 50_000,
              device=None, progress: bool = True):
    """A VGG (`models.vgg(arch, width)`, BatchNorm) trained on CIFAR-10 with `recipe` (keyword arguments of
    `train.fit_classifier`) on a class-balanced `n_train`-image subset drawn with `seed`; cached by
    `train.cached_model` (the key holds the data source, so JPEG-copy and torchvision models stay apart).
    Returns (model in eval mode, the training subset x float32, its labels, source)."""
    import torch
    from . import models, train
    x8, y, source = load_cifar10("train", dtype="uint8")
    idx = subset(y, n_train, seed)
    x, y = x8[idx].float() / 255.0, y[idx]
    key = {"name": f"vgg{arch}{width}_cifar10", "data": f"cifar10:train:{source}", "n_train": len(idx),
           "seed": seed, **recipe}

    def build():
        torch.manual_seed(seed)
        return models.vgg(arch, width)

    def fit(model):
        train.fit_classifier(model, x, y, seed=seed, device=device, progress=progress, **recipe)

    noise = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = train.cached_model(key, build, fit, device, probe=train.loss_probe(noise, torch.arange(16) % 10))
    return model, x, y, source
