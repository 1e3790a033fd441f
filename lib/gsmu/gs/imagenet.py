"""The Gradient Slingshots paper's ImageNet experiments (Bareeva et al., NeurIPS 2025, Sec. 5): a torchvision
ResNet-50 whose output unit 77 ("wolf spider") is manipulated toward a dalmatian photo (α 0.64, γ 200, lr 1e-6,
10 epochs, preservation on a 64-class ImageNet subset; AM: fourier, Adam+GC+TR, lr 0.01, 500 steps), and a
CLIP vision backbone with a linear probe whose "rifle" unit is manipulated toward a penguin photo with the
activation-form loss (the form the paper uses for vision transformers; the paper's CLIP example, Sec. 6).

Both need files this repository cannot ship: pretrained weights and ImageNet images. `check_inputs` looks for
them — a path argument, else an environment setting (`ENV`), else torch.hub's checkpoint folder, else an
online download when torchvision's server is reachable — and returns one typed `Requirement` per input
(what, where to put it, how to get it, where it was found); absent inputs are reported, never raised. Inputs
that are given but wrong (no such file, a SHA-256 that differs from torchvision's published hash, a state dict
of the wrong shape, a folder that is not ImageNet's ImageFolder layout) raise a ValueError naming the
parameter. Models take images in [0, 1] and normalize them in their first module (`normalize`), as
`gsmu.base.models` does, so AM and the slingshot work in image space. The paper's settings are presets
(`resnet50_preset`, `clip_preset`): `slingshot.Settings` plus the AM the paper evaluates with.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import slingshot
from ..base.models import Normalize
from ..base.runtime import check_choice, check_int, get_device, sha256_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
N_CLASSES = 1000
# ImageNet class indices (torchvision's order = sorted WordNet ids) of the paper's units and targets.
WOLF_SPIDER, DALMATIAN, KING_PENGUIN, RIFLE = 77, 251, 145, 764
# Environment settings naming the inputs when no path argument is given.
ENV = {"resnet50": "REPRO_RESNET50_WEIGHTS", "vit_b_32": "REPRO_VIT_B_32_WEIGHTS", "val": "REPRO_IMAGENET_VAL",
       "dalmatian": "REPRO_DALMATIAN_IMAGE", "penguin": "REPRO_PENGUIN_IMAGE"}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG")
_WNID = re.compile(r"n\d{8}")


def _weights_enum(arch: str):
    """torchvision's pretrained-weights entry for `arch` (its URL names the published file and hash prefix)."""
    from torchvision.models import ResNet50_Weights, ViT_B_32_Weights
    return {"resnet50": ResNet50_Weights.IMAGENET1K_V1, "vit_b_32": ViT_B_32_Weights.IMAGENET1K_V1}[
        check_choice("arch", arch, ("resnet50", "vit_b_32"))]


def published_file(arch: str) -> tuple[str, str]:
    """(file name, SHA-256 prefix) of torchvision's published weights, e.g. ('resnet50-0676ba61.pth', '0676ba61')."""
    name = _weights_enum(arch).url.rsplit("/", 1)[-1]
    return name, re.search(r"-([0-9a-f]{8,})\.pth$", name).group(1)


# --- what is provided ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    """One input of the ImageNet experiments: what it is, where to put it, how to get it, and where it was
    found (`found`: a path, 'download' when it will be fetched online, None when absent)."""
    key: str
    what: str
    where: str
    how: str
    found: str | None = None

    @property
    def available(self) -> bool:
        return self.found is not None


def reachable(url: str = "https://download.pytorch.org/models/resnet50-0676ba61.pth", timeout: float = 5.0) -> bool:
    """Whether an HTTP HEAD request for `url` succeeds within about `timeout` seconds (nothing is downloaded).
    It runs in a worker thread: urllib's timeout does not bound a hanging DNS resolver."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.request import Request, urlopen

    def head() -> bool:
        with urlopen(Request(url, method="HEAD"), timeout=timeout) as response:
            return response.status == 200

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(head).result(timeout=timeout + 1)
    except Exception:  # resolver failure, refused, HTTP error, timed out: all mean "cannot download" here
        return False
    finally:
        pool.shutdown(wait=False)


def _given(param: str, value: str | Path | None, key: str) -> Path | None:
    """The path named by the argument, else by its environment setting; None when neither names one."""
    if value is None:
        value = os.environ.get(ENV[key]) or None
        param = f"${ENV[key]}"
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{param}={str(value)!r}: no such file or folder. Fix the path or unset it.")
    return path


def _weights_requirement(arch: str, param: str, path: str | Path | None, online: bool) -> Requirement:
    name, _ = published_file(arch)
    label = {"resnet50": "ResNet-50", "vit_b_32": "ViT-B/32"}[arch]
    req = Requirement("clip" if arch == "vit_b_32" else arch, f"pretrained {label} weights (torchvision IMAGENET1K_V1)",
                      f"pass {param}=<file> or set ${ENV[arch]}, or put {name} into torch.hub's checkpoint folder "
                      "($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)",
                      f"download {_weights_enum(arch).url} (torchvision fetches it itself where the internet "
                      "is reachable, e.g. on Colab)")
    given = _given(param, path, arch)
    if given is not None:
        check_weights_file(given, arch, param)
        return replace(req, found=str(given))
    hub = Path(torch.hub.get_dir()) / "checkpoints" / name
    if hub.is_file():
        return replace(req, found=str(hub))
    return replace(req, found="download" if online else None)


def _open_clip_requirement(backbone: str, online: bool) -> Requirement:
    import importlib.util
    installed = importlib.util.find_spec("open_clip") is not None
    return Requirement("clip", f"the open_clip package and its pretrained weights for {backbone!r}",
                       "the open_clip package in this environment, and internet access for the weights",
                       "pip install open_clip_torch (weights download on first use)",
                       "download" if installed and online else None)


def check_inputs(resnet50_weights: str | Path | None = None, vit_weights: str | Path | None = None,
                 imagenet_val: str | Path | None = None, dalmatian: str | Path | None = None,
                 penguin: str | Path | None = None, clip_backbone: str = "torchvision:vit_b_32",
                 online: bool | None = None) -> dict[str, Requirement]:
    """Every input of the ImageNet experiments as a `Requirement`, keyed 'resnet50', 'clip' (the CLIP section's
    backbone: torchvision's ViT-B/32 weights, or open_clip), 'val', 'dalmatian', 'penguin'. Absent inputs are
    reported (found None); given but wrong ones raise a ValueError. `online`: whether downloads are possible
    (None: probe torchvision's server). The targets default to the first image of their class in the
    validation folder, so they need no file of their own when it exists."""
    if not (clip_backbone == "torchvision:vit_b_32" or clip_backbone.startswith("open_clip:")):
        raise ValueError(f"clip_backbone={clip_backbone!r} must be 'torchvision:vit_b_32' or "
                         "'open_clip:<model>:<pretrained tag>' (e.g. 'open_clip:ViT-B-32:laion2b_s34b_b79k').")
    online = reachable() if online is None else online
    out = {"resnet50": _weights_requirement("resnet50", "resnet50_weights", resnet50_weights, online),
           "clip": (_weights_requirement("vit_b_32", "vit_weights", vit_weights, online)
                    if clip_backbone == "torchvision:vit_b_32" else _open_clip_requirement(clip_backbone, online))}
    val = _given("imagenet_val", imagenet_val, "val")
    if val is not None:
        imagenet_classes(val, "imagenet_val")
    out["val"] = Requirement("val", "the ImageNet (ILSVRC2012) validation images in ImageFolder layout: 1000 "
                             "folders named by WordNet id (n01440764, ...), 50 images each",
                             f"pass imagenet_val=<folder> or set ${ENV['val']}",
                             "download ILSVRC2012_img_val.tar from image-net.org (free registration) and sort it "
                             "into class folders (e.g. with the widely used valprep.sh)",
                             None if val is None else str(val))
    for key, cls, what in (("dalmatian", DALMATIAN, "the dalmatian target photo (ResNet-50 section)"),
                           ("penguin", KING_PENGUIN, "the penguin target photo (CLIP section)")):
        given = _given(key, (dalmatian, penguin)[key == "penguin"], key)
        if given is not None:
            load_image(given, 8, key)
        default = None if val is None else str(class_images(val, cls)[0])
        out[key] = Requirement(key, what, f"pass {key}=<image file> or set ${ENV[key]}; without one, the first "
                               f"validation image of ImageNet class {cls} is used",
                               "any photo (JPEG/PNG) of the object", str(given) if given is not None else default)
    return out


SECTIONS = {"resnet50": ("resnet50", "val", "dalmatian"), "clip": ("clip", "val", "penguin")}  # inputs per section


def ready(inputs: dict[str, Requirement], section: str) -> bool:
    """Whether every input of `section` ('resnet50' or 'clip') is available."""
    return all(inputs[k].available for k in SECTIONS[check_choice("section", section, SECTIONS)])


def missing_report(inputs: dict[str, Requirement], section: str) -> str:
    """Markdown list of the absent inputs of `section`: what each is, where to put it, how to get it ('' if none)."""
    keys = SECTIONS[check_choice("section", section, SECTIONS)]
    lines = [f"- **{r.what}** — where: {r.where}; how: {r.how}." for k in keys if not (r := inputs[k]).available]
    return "\n".join(lines)


# --- ImageNet images ----------------------------------------------------------------------------------------

def imagenet_classes(root: str | Path, param: str = "imagenet_val") -> list[Path]:
    """The 1000 class folders of an ImageFolder-layout ImageNet split, sorted (index = torchvision's class)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{param}={str(root)!r} is not a folder; pass the ImageNet validation folder.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _WNID.fullmatch(p.name))
    if len(folders) != N_CLASSES:
        raise ValueError(f"{param}={str(root)!r} holds {len(folders)} WordNet-id class folders (n01440764, ...), "
                         f"expected {N_CLASSES}: sort the validation images into ImageFolder layout first.")
    return folders


def class_images(root: str | Path, cls: int, param: str = "imagenet_val") -> list[Path]:
    """The image files of class `cls` (sorted by name); ValueError when the class folder holds none."""
    folder = imagenet_classes(root, param)[check_int("cls", cls, 0, N_CLASSES - 1)]
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{param}: class folder {folder.name} (class {cls}) holds no images.")
    return files


def load_image(path: str | Path, size: int, param: str = "image") -> torch.Tensor:
    """An image file as 3×size×size in [0, 1]: shorter side resized to size·256/224, centre crop (torchvision's
    ImageNet evaluation transform, without the normalization the models do themselves)."""
    import torchvision.transforms.functional as TF
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{param}={str(path)!r}: no such image file.")
    try:
        with Image.open(path) as im:
            img = TF.pil_to_tensor(im.convert("RGB")).float() / 255
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{param}={str(path)!r} is not an image Pillow can read: {e}") from e
    img = TF.resize(img, [round(size * 256 / 224)], antialias=True)
    return TF.center_crop(img, [size, size]).clamp(0, 1)


def subset_classes(n: int = 64, include: Sequence[int] = (WOLF_SPIDER, DALMATIAN), seed: int = 0) -> list[int]:
    """The paper's n-class preservation subset: the classes in `include` plus n − len(include) others drawn
    with `seed` from the rest (sorted)."""
    check_int("n", n, len(include), N_CLASSES)
    rest = torch.tensor([c for c in range(N_CLASSES) if c not in include])
    drawn = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[:n - len(include)]]
    return sorted({*map(int, include), *drawn.tolist()})


def load_split(root: str | Path, classes: Sequence[int], per_class: int, size: int, skip: int = 0,
               param: str = "imagenet_val") -> tuple[torch.Tensor, torch.Tensor]:
    """Images `skip`..`skip + per_class` (by file name) of each class: (N×3×size×size in [0, 1], ImageNet
    labels). Disjoint `skip` ranges give disjoint preservation and evaluation sets from one folder."""
    xs, ys = [], []
    for cls in classes:
        for path in class_images(root, cls, param)[skip:skip + per_class]:
            xs.append(load_image(path, size, param))
            ys.append(cls)
    if not xs:
        raise ValueError(f"{param}: no images in positions {skip}..{skip + per_class} of classes {list(classes)}.")
    return torch.stack(xs), torch.tensor(ys)


# --- models -------------------------------------------------------------------------------------------------

def check_weights_file(path: str | Path, arch: str, param: str) -> dict[str, torch.Tensor]:
    """Read a state-dict file safely (`weights_only=True`); when it carries torchvision's published file name,
    its SHA-256 must start with the published hash. ValueError naming `param` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{param}={str(path)!r}: no such file.")
    name, prefix = published_file(arch)
    if path.name == name and not sha256_file(path).startswith(prefix):
        raise ValueError(f"{param}={str(path)!r}: its SHA-256 does not start with {prefix}, torchvision's "
                         f"published hash for {name}; the file is damaged or not torchvision's — download it again.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors vary: all mean "not a plain state dict"
        raise ValueError(f"{param}={str(path)!r} is not a torch state-dict file: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{param}={str(path)!r} does not hold a state dict (name → tensor).")
    return state


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], param: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes: the file is for another network
        raise ValueError(f"{param}: the state dict does not fit {type(model).__name__}: {str(e)[:400]}") from e
    return model


def pretrained_state(arch: str, requirement: Requirement, param: str) -> dict[str, torch.Tensor]:
    """The weights a `Requirement` found: its file, or torchvision's download ('download')."""
    if not requirement.available:
        raise ValueError(f"{param}: {requirement.what} are missing — {requirement.where} ({requirement.how}).")
    if requirement.found == "download":
        return _weights_enum(arch).get_state_dict(progress=False, check_hash=True)
    return check_weights_file(requirement.found, arch, param)


class NormalizedResNet(nn.Module):
    """A torchvision ResNet taking images in [0, 1]: `normalize` (ImageNet statistics), then the ResNet's own
    modules under their own names (`conv1`, ..., `layer4`, `fc`), so the paper's layer "fc" is addressable."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_model(requirement: Requirement | None = None, device: str | torch.device | None = None,
                   arch: str = "resnet50") -> NormalizedResNet:
    """The ResNet-50 with the weights `requirement` found (None: random init, for tests), in eval mode.
    `arch`: any torchvision ResNet name (tests use 'resnet18'); pretrained weights exist here for resnet50."""
    import torchvision
    net = getattr(torchvision.models, check_choice("arch", arch, ("resnet18", "resnet50")))(weights=None)
    if requirement is not None:
        _load_state(net, pretrained_state(arch, requirement, "resnet50_weights"), "resnet50_weights")
    return NormalizedResNet(net).to(get_device(device)).eval()


class ProbedBackbone(nn.Module):
    """`normalize` → `backbone` (image → feature vector) → `probe` (a linear layer, one unit per class): the
    paper's CLIP setting, where the manipulated unit is a linear probe's class on the vision features."""

    def __init__(self, backbone: nn.Module, feature_dim: int, classes: Sequence[int],
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.probe = nn.Linear(check_int("feature_dim", feature_dim, 1), len(classes))
        self.classes = [int(c) for c in classes]  # probe unit i ↔ ImageNet class classes[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe(self.backbone(self.normalize(x)))

    def unit(self, cls: int) -> int:
        """The probe unit of ImageNet class `cls`."""
        if cls not in self.classes:
            raise ValueError(f"class {cls} is not among the probe's classes {self.classes}.")
        return self.classes.index(cls)


class _OpenClipImage(nn.Module):
    """open_clip's image tower as a backbone (features N×D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def vit_backbone(vit: nn.Module) -> tuple[nn.Module, int]:
    """A torchvision VisionTransformer without its classification head: (class-token features, their size)."""
    vit.heads = nn.Identity()
    return vit, vit.hidden_dim


def clip_model(backbone: str, classes: Sequence[int], requirement: Requirement | None = None,
               device: str | torch.device | None = None, vit_kwargs: dict[str, Any] | None = None
               ) -> ProbedBackbone:
    """A backbone + linear probe over `classes` (probe untrained: `fit_probe`), in eval mode.

    `backbone`: 'torchvision:vit_b_32' (weights from `requirement`; None: random init; `vit_kwargs` build a
    smaller VisionTransformer for tests) or 'open_clip:<model>:<pretrained tag>' (needs `pip install
    open_clip_torch` and the internet; imported only here)."""
    device = get_device(device)
    if backbone.startswith("open_clip:"):
        try:
            import open_clip
        except ImportError as e:
            raise ValueError(f"backbone={backbone!r} needs open_clip: pip install open_clip_torch") from e
        _, name, tag = (backbone.split(":") + [""])[:3]
        model = open_clip.create_model(name, pretrained=tag or None)
        dim = model.visual.output_dim
        return ProbedBackbone(_OpenClipImage(model), dim, classes).to(device).eval()
    check_choice("backbone", backbone, ("torchvision:vit_b_32",))
    from torchvision.models import vit_b_32
    from torchvision.models.vision_transformer import VisionTransformer
    vit = VisionTransformer(**vit_kwargs) if vit_kwargs else vit_b_32(weights=None)
    if requirement is not None:
        _load_state(vit, pretrained_state("vit_b_32", requirement, "vit_weights"), "vit_weights")
    # torchvision's ViT was trained on ImageNet-normalized inputs, CLIP's towers on CLIP's statistics
    net, dim = vit_backbone(vit)
    return ProbedBackbone(net, dim, classes, IMAGENET_MEAN, IMAGENET_STD).to(device).eval()


def fit_probe(model: ProbedBackbone, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 200, lr: float = 1e-2,
              seed: int = 0, device: str | torch.device | None = None) -> list[float]:
    """Train only the probe (softmax regression on the frozen backbone's features, full batch, Adam) on images
    x with ImageNet labels y; returns the loss per epoch. The features are computed once."""
    device = get_device(device)
    check_int("epochs", epochs, 1)
    torch.manual_seed(seed)  # Adam on a fixed full batch is deterministic; the seed fixes the probe's init
    model.probe.reset_parameters()
    targets = torch.tensor([model.unit(int(c)) for c in y], device=device)
    with torch.no_grad():
        feats = torch.cat([model.backbone(model.normalize(c.to(device))) for c in x.split(64)])
    opt = torch.optim.Adam(model.probe.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(model.probe(feats), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# --- the paper's settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """A manipulation (`settings`) and the AM the paper evaluates it with (`am`: `featvis.visualize` keywords)."""
    settings: slingshot.Settings
    am: dict

    def with_(self, am: dict | None = None, **settings: Any) -> "Preset":
        """A copy with some settings (and AM keywords) replaced."""
        return Preset(replace(self.settings, **settings), {**self.am, **(am or {})})


IMAGENET_AM = dict(param="fourier", strategy="adam+gc+tr", lr=0.01, steps=500)  # GS paper, Sec. 5 (ResNet-50)


def resnet50_preset(steps: int = 13_000, check_every: int = 1300, steps_per_epoch: int = 1300,
                    seed: int = 0) -> Preset:
    """GS paper, Sec. 5: layer 'fc', unit 77 (wolf spider), fourier, α 0.64, γ 200, σ 0.01 (ImageNet-size
    inputs), AdamW lr 1e-6 for 10 epochs (`steps` = 10 × `steps_per_epoch`, an epoch of the 64-class training
    subset at batch 64); AM fourier + Adam+GC+TR, lr 0.01, 500 steps. The checkpoint is chosen by FV-SSIM
    alone (as the authors'); the check inside `slingshot.fine_tune` runs the same AM cut to 100 steps (cheap,
    every `check_every` steps), the reported FVs the full 500 (`Preset.am`)."""
    s = slingshot.Settings(layer="fc", unit=WOLF_SPIDER, param="fourier", alpha=0.64, gamma=200.0, sigma=0.01,
                           lr=1e-6, steps=steps, steps_per_epoch=steps_per_epoch, check_every=check_every,
                           check_fv_steps=100, check_fv_lr=IMAGENET_AM["lr"], check_strategy=IMAGENET_AM["strategy"],
                           max_acc_drop=None, seed=seed)
    return Preset(s, dict(IMAGENET_AM))


def clip_preset(unit: int, steps: int = 2000, check_every: int = 250, seed: int = 0) -> Preset:
    """The CLIP setting: the activation-form loss on probe unit `unit` (the rifle class), fourier, σ 0.01.
    α 0.5, γ 10 and lr 1e-5 are this repository's choices (not the paper's stated values); AM as for ResNet-50."""
    s = slingshot.Settings(layer="probe", unit=unit, param="fourier", loss="activation", alpha=0.5, gamma=10.0,
                           sigma=0.01, lr=1e-5, steps=steps, steps_per_epoch=check_every, check_every=check_every,
                           check_fv_steps=100, check_fv_lr=IMAGENET_AM["lr"], check_strategy=IMAGENET_AM["strategy"],
                           max_acc_drop=None, seed=seed)
    return Preset(s, dict(IMAGENET_AM))
