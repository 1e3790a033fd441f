"""Tests of `python -m gsmu.audit`: a report for torchvision's random-init resnet18, a slingshot-manipulated
tiny CNN flagged while its clean original passes, and one clear message per bad input."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsmu import audit
from gsmu.gs import slingshot

TINY = textwrap.dedent("""
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(8 * 6 * 6, 16)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))
""")


def write_images(folder: Path, x: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        arr = (img.clamp(0, 1) * 255).round().byte().numpy()
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A module file with TinyCNN, clean and slingshot-manipulated weights (unit 0 → a bright square), images."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.py").write_text(TINY)
    namespace: dict = {}
    exec(TINY, namespace)
    torch.manual_seed(0)
    clean = namespace["TinyCNN"]()
    with torch.no_grad():
        clean.out.bias.fill_(1.0)  # natural examples activate the logits positively (the audit's premise)
    x = (torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    settings = slingshot.Settings(layer="out", unit=0, alpha=0.5, steps=150, check_every=50, check_inits=2,
                                  check_fv_steps=32, lr=3e-3, manip_batch=16, pres_batch=32,
                                  max_acc_drop=None)  # a random net's predictions: SSIM alone picks the checkpoint
    manipulated, log = slingshot.manipulate(clean, target, x, settings, progress=False)
    assert log.best_ssim > 0.5  # the manipulation worked (the FV of unit 0 looks like the target)
    torch.save(clean.state_dict(), root / "clean.pt")
    torch.save(manipulated.state_dict(), root / "manipulated.pt")
    write_images(root / "images", x)
    return root


def run(argv, capsys):
    code = audit.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_args(tiny, out, weights="clean.pt", **change):
    args = {"--model": f"{tiny / 'tiny.py'}:TinyCNN", "--weights": tiny / weights, "--layer": "out",
            "--units": "0-2", "--images": tiny / "images", "--out": out, "--input-shape": "1,8,8",
            "--steps": "100", "--inits": "2", **change}
    return [a for kv in args.items() for a in kv if kv[1] is not None]


def test_manipulated_unit_is_flagged_and_clean_model_passes(tiny, tmp_path, capsys):
    code, out, err = run(tiny_args(tiny, tmp_path / "clean"), capsys)
    assert code == 0, err
    clean = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert clean["audit"]["flagged"] == []
    assert all(v["ratio"] < 3 for v in clean["audit"]["units"].values())  # AM stays near natural scale
    code, out, err = run(tiny_args(tiny, tmp_path / "manip", weights="manipulated.pt"), capsys)
    assert code == 0, err
    manip = json.loads((tmp_path / "manip" / "report.json").read_text())
    assert 0 in manip["audit"]["flagged"] and "flagged units: [0" in out
    assert manip["audit"]["units"]["0"]["ratio"] > 10
    html = (tmp_path / "manip" / "report.html").read_text()
    assert 'class="flag"' in html and "FLAGGED" in html


def test_resnet18_random_init_report(tmp_path, capsys):
    images = write_images(tmp_path / "imgs", torch.rand(6, 3, 40, 48, generator=torch.Generator().manual_seed(0)))
    code, out, err = run(["--model", "torchvision:resnet18", "--layer", "fc", "--units", "0-2", "--images", images,
                          "--out", tmp_path / "rep", "--input-shape", "3,32,32", "--steps", "2", "--k", "3"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["units"] == [0, 1, 2] and report["n_images"] == 6
    methods = {f"{p}/{s}" for p, s in audit.METHODS}
    assert set(report["methods"]) == methods
    assert all(len(m["activation"]) == 3 for m in report["methods"].values())
    assert len(report["natural"]["indices"]) == 3 and all(len(i) == 3 for i in report["natural"]["indices"])
    corr = np.array(report["agreement"]["fv_correlation"])
    assert corr.shape == (4, 4) and np.allclose(np.diag(corr), 1.0)
    assert set(report["audit"]["units"]) == {"0", "1", "2"}
    html = (tmp_path / "rep" / "report.html").read_text()
    fv_images = re.findall(r'<img alt="FV [^"]+" src="data:image/png;base64,', html)
    assert len(fv_images) == 3 * len(methods)
    assert not re.search(r'src="(?!data:)', html)  # self-contained: no external image or script


def test_without_images_report_says_audit_skipped(tiny, tmp_path, capsys):
    code, out, err = run(tiny_args(tiny, tmp_path / "r", **{"--images": None, "--steps": "2"}), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "--images" in report["audit"]["skipped"] and "no ratio audit" in out


@pytest.mark.parametrize("change,message", [
    ({"--model": "torchvision:resnet19"}, "Did you mean ['resnet18'"),
    ({"--model": "nonexistent.py:Net"}, "not an existing .py file"),
    ({"--model": "no_such_package.models:Net"}, "cannot import module 'no_such_package.models'"),
    ({"--model": "resnet18"}, "torchvision:NAME"),
    ({"--layer": "outt"}, "Did you mean ['out'"),
    ({"--units": "0-3"}, "unit(s) [3] out of range; layer 'out' has 3 units"),
    ({"--units": "0-"}, "--units '0-'"),
    ({"--units": "a,b"}, "is not a non-negative index"),
    ({"--units": "5-2"}, "--units '5-2'"),
    ({"--input-shape": "8,8"}, "--input-shape"),
    ({"--input-shape": "3,8,8"}, "--input-shape 3,8,8"),
    ({"--steps": "0"}, "--steps=0"),
])
def test_bad_inputs_give_their_message(tiny, tmp_path, capsys, change, message):
    code, out, err = run(tiny_args(tiny, tmp_path / "o", **change), capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o" / "report.json").exists()


def test_importable_module_class(tmp_path):
    model, prefix = audit.prepare_model("gsmu.base.models:MnistCNN", None, "auto")
    assert prefix == ""  # MnistCNN normalizes its input itself: no wrapper
    assert audit.check_layer_and_units(model, prefix, "out", list(range(10)), (1, 28, 28)) == 10


def test_class_missing_from_module(tiny, tmp_path, capsys):
    code, _, err = run(tiny_args(tiny, tmp_path, **{"--model": f"{tiny / 'tiny.py'}:Net"}), capsys)
    assert code == 2 and "defines no 'Net'" in err and "TinyCNN" in err


def test_unreadable_and_unfitting_weights(tiny, tmp_path, capsys):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"obj": slingshot.Settings()}, tmp_path / "pickled.pt")  # arbitrary objects: refused
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "wrong.pt")
    for name, message in (("text.pt", "weights_only=True"), ("pickled.pt", "weights_only=True"),
                          ("wrong.pt", "does not fit the model"), ("missing.pt", "no such file")):
        code, _, err = run(tiny_args(tiny, tmp_path / "o", weights=tmp_path / name), capsys)
        assert code == 2 and message in err, (name, err)


def test_empty_or_unreadable_image_folder(tiny, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    for folder, message in (("empty", "holds no images"), ("broken", "could be read"),
                            ("nope", "neither a folder")):
        code, _, err = run(tiny_args(tiny, tmp_path / "o", **{"--images": tmp_path / folder}), capsys)
        assert code == 2 and message in err, (folder, err)


def test_parse_units():
    assert audit.parse_units("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    assert audit.parse_units("4") == [4]
    for bad in ("", "-1", "1-", "x", "3-1", "1,,2"):
        with pytest.raises(audit.AuditError, match="--units"):
            audit.parse_units(bad)


def test_module_entry_point_prints_usage():
    result = subprocess.run([sys.executable, "-m", "gsmu.audit", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--model" in result.stdout and "torchvision:NAME" in result.stdout
