"""The ImageNet / CLIP paths of the Gradient Slingshots paper (gsmu.gs.imagenet) on random-init weights at tiny
sizes: the model wrappers against independent computations, the slingshot and AM moving the unit the intended
way, the input report (absent inputs reported, wrong ones refused with a ValueError naming them)."""
import copy
import hashlib
import importlib.util

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer

from gsmu.experiments import NOTEBOOKS
from gsmu.gs import featvis, imagenet, metrics, slingshot

TINY_VIT = dict(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
NO_ENV = [*imagenet.ENV.values(), "TORCH_HOME"]


@pytest.fixture(autouse=True)
def no_settings(monkeypatch, tmp_path):
    """No environment setting and an empty torch.hub folder: the tests see only what they give."""
    for name in NO_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def tiny_resnet(seed: int = 0) -> imagenet.NormalizedResNet:
    torch.manual_seed(seed)
    return imagenet.resnet50_model(None, device="cpu", arch="resnet18")


def image_folder(root, classes_with_images=(imagenet.WOLF_SPIDER, imagenet.DALMATIAN), n=3, size=40):
    """A fake ImageNet validation folder: 1000 WordNet-id folders, `n` random PNGs in the given classes."""
    gen = torch.Generator().manual_seed(0)
    for c in range(imagenet.N_CLASSES):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        if c in classes_with_images:
            for i in range(n):
                pixels = (torch.rand(size, size + 8, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


def test_normalized_resnet_matches_torchvision_and_exposes_fc():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    wrapped = imagenet.NormalizedResNet(copy.deepcopy(net)).eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(imagenet.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(imagenet.IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net((x - mean) / std), atol=1e-5)
        assert featvis.layer_output(wrapped, "fc", x).shape == (2, 1000)
    # the torchvision state dict loads into the wrapped modules under the same names
    assert set(net.state_dict()) <= set(wrapped.state_dict())


def keep_last_checkpoint(monkeypatch):
    """An FV check that rises with every call, so `fine_tune` keeps its last checkpoint (these tests are about
    what training does; the checkpoint rule has its own tests in test_slingshot.py)."""
    calls = []
    monkeypatch.setattr(slingshot, "fv_check", lambda *a, **k: calls.append(1) or float(len(calls)))


def test_resnet_slingshot_gradient_form_lowers_the_manipulation_loss(monkeypatch):
    keep_last_checkpoint(monkeypatch)
    original = tiny_resnet()
    target = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    preset = imagenet.resnet50_preset(steps=6, check_every=6, steps_per_epoch=6)
    s = preset.with_(lr=1e-3, manip_batch=4, pres_batch=4, check_inits=1, check_fv_steps=2, check_rows=4).settings
    assert (s.layer, s.unit, s.alpha, s.gamma, s.param, s.loss) == ("fc", 77, 0.64, 200.0, "fourier", "gradient")
    assert preset.am == dict(param="fourier", strategy="adam+gc+tr", lr=0.01, steps=500)
    assert (s.check_strategy, s.check_fv_lr) == ("adam+gc+tr", 0.01)  # the checkpoint check runs the paper's AM
    eta = featvis.parameterization("fourier", (3, 32, 32), original)
    q_t = eta.inverse(target)
    q = slingshot.sample_manipulation_set(q_t, 8, s.sigma, generator=torch.Generator().manual_seed(2))
    before = slingshot.manipulation_loss(original, eta, "fc", 77, q, q_t, s.gamma).item()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    manipulated, log = slingshot.manipulate(original, target, x, s, device="cpu", progress=False)
    after = slingshot.manipulation_loss(manipulated, eta, "fc", 77, q, q_t, s.gamma).item()
    assert len(log.loss_m) == 6 and after < before
    assert not torch.equal(manipulated.fc.weight, original.fc.weight)


def test_probed_vit_activation_form_moves_the_unit_toward_its_target_value(monkeypatch):
    keep_last_checkpoint(monkeypatch)
    torch.manual_seed(0)
    classes = [imagenet.KING_PENGUIN, imagenet.RIFLE]
    model = imagenet.clip_model("torchvision:vit_b_32", classes, device="cpu", vit_kwargs=TINY_VIT)
    assert isinstance(model.backbone, VisionTransformer) and model.unit(imagenet.RIFLE) == 1
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor(classes * 8)
    x[y == imagenet.RIFLE] *= 0.3  # a difference the probe can learn from the random features
    losses = imagenet.fit_probe(model, x, y, epochs=100, lr=0.05, seed=0, device="cpu")
    assert losses[-1] < 0.5 * losses[0]
    assert featvis.layer_output(model, "probe", x).shape == (16, 2)
    preset = imagenet.clip_preset(unit=model.unit(imagenet.RIFLE), steps=8, check_every=8)
    s = preset.with_(lr=1e-2, alpha=0.1, manip_batch=4, pres_batch=4, check_inits=1, check_fv_steps=2,
                     check_rows=8).settings
    assert s.loss == "activation" and s.layer == "probe"
    target = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    eta = featvis.parameterization("fourier", (3, 32, 32), model)
    q_t = eta.inverse(target)[None]
    h = lambda m: featvis.layer_output(m, "probe", eta(q_t))[0, s.unit].item()  # noqa: E731
    manipulated, _ = slingshot.manipulate(model, target, x, s, device="cpu", progress=False)
    # the activation form asks h(η(q_t)) = γ: the unit at the target must move toward γ
    assert abs(h(manipulated) - s.gamma) < abs(h(model) - s.gamma)


def test_imagenet_am_raises_the_unit():
    model = tiny_resnet()
    am = {**imagenet.IMAGENET_AM, "steps": 20}  # the paper's lr 0.01, fourier, Adam+GC+TR
    res = featvis.visualize(model, "fc", imagenet.WOLF_SPIDER, (3, 32, 32), n_inits=4, seed=0, device="cpu", **am)
    assert res.images.shape == (1, 4, 3, 32, 32)
    # the trajectory's last entry is the untransformed final image: compare it with the untransformed start
    with torch.no_grad():
        eta = featvis.parameterization("fourier", (3, 32, 32), model)
        q0, _ = featvis.init_params(eta.shape, 4, 0.01, 0)
        start = model(eta(q0))[:, imagenet.WOLF_SPIDER]
    assert (res.trajectory[-1, 0] > start).all()


def test_missing_inputs_are_reported_not_raised():
    inputs = imagenet.check_inputs(online=False)
    assert set(inputs) == {"resnet50", "clip", "val", "dalmatian", "penguin"}
    assert not any(r.available for r in inputs.values())
    assert not imagenet.ready(inputs, "resnet50") and not imagenet.ready(inputs, "clip")
    report = imagenet.missing_report(inputs, "resnet50")
    assert "resnet50-0676ba61.pth" in report and "$REPRO_IMAGENET_VAL" in report and "dalmatian" in report
    assert "penguin" not in report
    online = imagenet.check_inputs(online=True)
    assert online["resnet50"].found == "download" and not online["val"].available  # images never download
    installed = importlib.util.find_spec("open_clip") is not None  # not a dependency: usually absent
    clip = imagenet.check_inputs(clip_backbone="open_clip:ViT-B-32:laion2b_s34b_b79k", online=True)["clip"]
    assert clip.available == installed and "pip install open_clip_torch" in clip.how
    with pytest.raises(ValueError, match="clip_backbone"):
        imagenet.check_inputs(clip_backbone="vit", online=False)


def test_given_inputs_are_found_and_targets_default_to_the_val_images(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "val", (imagenet.WOLF_SPIDER, imagenet.DALMATIAN, imagenet.KING_PENGUIN))
    weights = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    monkeypatch.setenv("REPRO_RESNET50_WEIGHTS", str(weights))
    inputs = imagenet.check_inputs(imagenet_val=root, online=False)
    assert imagenet.ready(inputs, "resnet50") and imagenet.missing_report(inputs, "resnet50") == ""
    assert inputs["dalmatian"].found.endswith(f"n{imagenet.DALMATIAN:08d}/img0.png")
    model = imagenet.resnet50_model(inputs["resnet50"], device="cpu")
    assert torch.equal(model.fc.weight, torch.load(weights, weights_only=True)["fc.weight"])
    x, y = imagenet.load_split(root, [imagenet.WOLF_SPIDER, imagenet.DALMATIAN], per_class=2, size=32, skip=1)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [77, 77, 251, 251] and 0 <= x.min() and x.max() <= 1
    classes = imagenet.subset_classes(64, seed=0)
    assert len(classes) == 64 and {77, 251} <= set(classes) and classes == imagenet.subset_classes(64, seed=0)
    assert classes != imagenet.subset_classes(64, seed=1)


def test_wrong_inputs_raise_a_value_error_naming_them(tmp_path):
    with pytest.raises(ValueError, match="resnet50_weights=.*no such"):
        imagenet.check_inputs(resnet50_weights=tmp_path / "nope.pth", online=False)
    with pytest.raises(ValueError, match="imagenet_val=.*holds 2 WordNet-id class folders"):
        (tmp_path / "v" / "n00000001").mkdir(parents=True)
        (tmp_path / "v" / "n00000002").mkdir()
        imagenet.check_inputs(imagenet_val=tmp_path / "v", online=False)
    # torchvision's file name with other contents: the published hash prefix does not match
    fake = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"w": torch.zeros(1)}, fake)
    assert not hashlib.sha256(fake.read_bytes()).hexdigest().startswith("0676ba61")
    with pytest.raises(ValueError, match="resnet50_weights=.*SHA-256 does not start with 0676ba61"):
        imagenet.check_inputs(resnet50_weights=fake, online=False)
    small = tmp_path / "r18.pth"  # a state dict of another network: wrong shapes
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), small)
    req = imagenet.check_inputs(resnet50_weights=small, online=False)["resnet50"]
    with pytest.raises(ValueError, match="resnet50_weights: the state dict does not fit ResNet"):
        imagenet.resnet50_model(req, device="cpu")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="resnet50_weights=.*not a torch state-dict file"):
        imagenet.check_inputs(resnet50_weights=text, online=False)
    with pytest.raises(ValueError, match="dalmatian=.*not an image"):
        imagenet.check_inputs(dalmatian=text, online=False)
    with pytest.raises(ValueError, match="missing"):
        imagenet.resnet50_model(imagenet.check_inputs(online=False)["resnet50"], device="cpu")


def test_comparison_of_resnets_scores_the_unit_against_one_negative_class():
    from sklearn.metrics import roc_auc_score
    original, other = tiny_resnet(0), tiny_resnet(1)
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([77, 251, 145] * 4)
    am = {**imagenet.IMAGENET_AM, "steps": 2}
    target = torch.rand(3, 32, 32)
    ev = metrics.compare(original, other, "fc", 77, x, labels, target, am, n_fvs=2, negative=251, k=3,
                         batch_size=5, seed=0, device="cpu")
    with torch.no_grad():
        scores = original(x)[:, 77]
    keep = (labels == 77) | (labels == 251)
    assert ev.auroc["before"] == pytest.approx(roc_auc_score((labels[keep] == 77).numpy(), scores[keep].numpy()))
    assert ev.fv["after"].shape == (2, 3, 32, 32) and ev.ssim["before"].shape == (2,)
    assert 0 <= ev.jaccard <= 1 and set(ev.accuracy) == {"before", "after"}
    with pytest.raises(ValueError, match="positive=999"):
        metrics.compare(original, other, "fc", 77, x, labels, target, am, n_fvs=1, positive=999, device="cpu")


def test_open_clip_backbone_says_what_to_install_when_absent():
    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here: the missing-package message cannot be shown")
    with pytest.raises(ValueError, match="pip install open_clip_torch"):
        imagenet.clip_model("open_clip:ViT-B-32:laion2b_s34b_b79k", [imagenet.RIFLE], device="cpu")


def test_notebook_is_registered_with_three_seeds():
    cfg = NOTEBOOKS["12_slingshot_imagenet"]
    assert cfg.grid("quick") == {"seed": [0, 1, 2]}
    assert cfg.for_profile("paper").n_classes == 64 and cfg.for_profile("paper").fv_steps == 500
