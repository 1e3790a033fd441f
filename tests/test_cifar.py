"""CIFAR-10 loader: the mirror's JPEG copy (verified, decoded once, cached) and the torchvision fallback."""
import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gsmu.base import cifar, data


def _mirror():
    try:
        base = data.mirror_dir()
    except FileNotFoundError:
        pytest.skip("no data mirror on this machine")
    if not (base / cifar.ARCHIVE).is_file():
        pytest.skip("the data mirror has no CIFAR-10 copy")
    return base


def test_real_copy_shapes_classes_and_source():
    _mirror()
    for split, per_class in (("train", 5000), ("test", 1000)):
        x, y, source = cifar.load_cifar10(split, dtype="uint8")
        assert source == cifar.SOURCE_JPEG
        assert x.shape == (10 * per_class, 3, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.int64
        assert y.bincount(minlength=10).tolist() == [per_class] * 10
    xf, _, _ = cifar.load_cifar10("test")
    assert xf.dtype == torch.float32 and 0.0 <= xf.min() and xf.max() <= 1.0
    # CIFAR-10's test-set channel means (0.494, 0.485, 0.450); JPEG-75 moves them by < 0.005
    assert torch.allclose(xf.mean((0, 2, 3)), torch.tensor([0.494, 0.485, 0.450]), atol=5e-3)


def test_decoded_image_equals_an_independent_pillow_decode():
    base = _mirror()
    x, y, _ = cifar.load_cifar10("test", dtype="uint8")
    with tarfile.open(base / cifar.ARCHIVE, "r:xz") as tar:
        raw = tar.extractfile("test/cat/0000.jpg").read()
    expected = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1)
    index = 3 * 1000  # ordered by class (torchvision's order: cat is 3), then file name
    assert y[index] == 3 and y[index - 1] == 2
    assert np.array_equal(x[index].numpy(), expected)


def _tiny_mirror(root, per_class=2):
    """A mirror with a tiny archive of the real layout (random images) and its SHA256SUMS."""
    rng = np.random.default_rng(0)
    archive = root / cifar.ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:xz") as tar:
        for split in ("train", "test"):
            for name in cifar.CLASSES:
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{digest}  ./{cifar.ARCHIVE}\n")
    return archive


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar, "SIZES", {"train": 20, "test": 20})
    calls = []
    real = cifar._decode_split
    monkeypatch.setattr(cifar, "_decode_split", lambda *a: calls.append(a) or real(*a))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return mirror, _tiny_mirror(mirror), calls


def test_cache_is_reused_and_checked(tiny):
    mirror, _, calls = tiny
    x1, y1, source = cifar.load_cifar10("test", mirror=mirror)
    assert source == cifar.SOURCE_JPEG and x1.shape == (20, 3, 32, 32) and y1.tolist() == sorted(y1.tolist())
    x2, y2, _ = cifar.load_cifar10("test", mirror=mirror)
    assert len(calls) == 1  # the second call read the cache
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    cached = next((mirror.parent / "cache" / "data").glob("cifar10-jpeg-q75-*-test.npz"))
    cached.write_bytes(cached.read_bytes()[:-10])  # a damaged cache file fails its checksum: decoded again
    x3, _, _ = cifar.load_cifar10("test", mirror=mirror)
    assert len(calls) == 2 and torch.equal(x1, x3)


def test_corrupted_archive_raises_before_decoding(tiny):
    mirror, archive, calls = tiny
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(cifar.CifarError, match="SHA-256"):
        cifar.load_cifar10("train", mirror=mirror)
    assert calls == []


def test_no_mirror_falls_back_to_torchvision(tmp_path, monkeypatch):
    fake = (torch.rand(4, 3, 32, 32), torch.arange(4))
    monkeypatch.setattr(data, "load_cifar10", lambda split: fake)
    x, y, source = cifar.load_cifar10("test", mirror=tmp_path)
    assert source == cifar.SOURCE_TORCHVISION and torch.equal(x, fake[0]) and torch.equal(y, fake[1])


def test_no_mirror_and_no_internet_says_what_to_do(tmp_path, monkeypatch):
    def offline(split):
        raise data.DataError("CIFAR-10 could not be downloaded (no network)")
    monkeypatch.setattr(data, "load_cifar10", offline)
    monkeypatch.setenv("REPRO_DATA_MIRROR", str(tmp_path))
    with pytest.raises(cifar.CifarError, match="REPRO_DATA_MIRROR") as err:
        cifar.load_cifar10("train")
    assert "torchvision" in str(err.value) and cifar.ARCHIVE in str(err.value)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="split"):
        cifar.load_cifar10("val")
    with pytest.raises(ValueError, match="dtype"):
        cifar.load_cifar10("test", dtype="float16")


def test_subset_is_balanced_deterministic_and_seeded():
    y = torch.arange(10).repeat_interleave(50)
    a, b, c = cifar.subset(y, 100, seed=0), cifar.subset(y, 100, seed=0), cifar.subset(y, 100, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert y[a].bincount(minlength=10).tolist() == [10] * 10 and len(set(a.tolist())) == 100
    assert torch.equal(cifar.subset(y, 1000, seed=0), torch.arange(500))  # n beyond the data: all rows
    with pytest.raises(ValueError, match="n"):
        cifar.subset(y, 5, seed=0)


def test_vgg_model_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(cifar, "load_cifar10", lambda split, dtype="float32": (
        torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8), torch.arange(10).repeat(20), "test source"))
    from gsmu.base import train
    fits = []
    real = train.fit_classifier
    monkeypatch.setattr(train, "fit_classifier", lambda *a, **k: fits.append(1) or real(*a, **k))
    recipe = dict(epochs=1, batch_size=50, lr=1e-3, optimizer="adam", schedule="none")
    m1, x, y, source = cifar.vgg_model("A", 2, recipe, seed=0, n_train=100, progress=False)
    m2, *_ = cifar.vgg_model("A", 2, recipe, seed=0, n_train=100, progress=False)
    assert len(fits) == 1 and source == "test source"
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.bincount().tolist() == [10] * 10
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_parallel_first_loads_decode_once(tiny, monkeypatch):
    import threading
    import time
    mirror, _, calls = tiny
    counted = cifar._decode_split
    monkeypatch.setattr(cifar, "_decode_split", lambda *a: time.sleep(0.3) or counted(*a))  # a slow decode
    out = []
    threads = [threading.Thread(target=lambda: out.append(cifar.load_cifar10("train", mirror=mirror))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 3 and len(calls) == 1  # the others waited on the lock, then read the cache
    assert all(torch.equal(o[0], out[0][0]) for o in out)


def test_shuffled_mixes_the_class_ordered_copy():
    """The JPEG copy is ordered by class: `shuffled` (used for train/validation cuts and prefixes) is a fixed
    permutation of the same rows, whose prefix holds every class."""
    x, y, _ = cifar.load_cifar10("test")
    xs, ys = cifar.shuffled("test", seed=0)
    assert len(torch.unique(y[:500])) == 1  # the copy's own order: one class first
    assert len(torch.unique(ys[:500])) == 10
    assert torch.equal(torch.bincount(ys), torch.bincount(y))
    xs2, _ = cifar.shuffled("test", seed=0)
    assert torch.equal(xs, xs2)
