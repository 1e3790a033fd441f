"""Audit the feature visualizations of any image classifier: `python -m gsmu.audit`.

    python -m gsmu.audit --model torchvision:resnet18 [--weights FILE] --layer fc --units 0-9 \\
        [--images DIR | mnist | cifar10] --out report/
    python -m gsmu.audit --model path/to/module.py:ClassName --weights model.pt --layer out --units 0-9 ...
    python -m gsmu.audit --model gsmu.base.models:MnistCNN --weights CHECKPOINT.pt --layer out --units 0-9 \
        --images mnist --input-shape 1,28,28 --steps 200 --out report/

Runs several activation-maximization (AM) methods on each unit — pixel and Fourier parameterization, Adam
with and without gradient clipping and random transforms — and, when natural images are given, the
activation-ratio audit of `gsmu.gs.metrics.audit` (Gradient Slingshots, Bareeva et al., NeurIPS 2025: the
manipulation shapes a unit into a steep quadratic along the tunnel to the target, so AM reaches activations
far above those of any real input; "protective measures" discussion). It also reports the top-k natural
examples per unit and how much the methods agree (correlation of their FV images, spread of the activations
they reach). Writes `report.json` and a self-contained `report.html` (images embedded as base64 PNG).

All inputs are checked (model, weights, layer, units, image folder) before any optimization starts.
"""
from __future__ import annotations

import argparse
import base64
import difflib
import html
import importlib
import importlib.util
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .base.runtime import parse_index_list
from .gs import featvis, metrics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BUILTIN_IMAGES = ("mnist", "cifar10")
# (parameterization, strategy) pairs run on every unit: pixel and Fourier, Adam with and without GC + TR.
# The ratio audit (gsmu.gs.metrics.audit) runs its own method: pixel, SGD+GC (the authors' AM, the one a
# slingshot targets).
METHODS = (("pixel", "adam"), ("pixel", "adam+gc+tr"), ("fourier", "adam"), ("fourier", "adam+gc+tr"))
AUDIT_METHOD = ("pixel", "sgd+gc")


class AuditError(ValueError):
    """A bad input of the audit command (the message says which option and what to do)."""


# --- parsing ------------------------------------------------------------------------------------------------

def parse_units(spec: str) -> list[int]:
    """'0-9', '3', '0,2,5' or '0-3,7' → sorted unique unit indices; AuditError on anything else."""
    try:
        return parse_index_list(spec)
    except ValueError as e:
        raise AuditError(f"--units {spec!r}: {e}; write e.g. '0-9', '3' or '0,2,5-7'.") from None


def parse_shape(spec: str) -> tuple[int, int, int]:
    """'3,64,64' → (3, 64, 64); AuditError otherwise."""
    try:
        shape = tuple(int(s) for s in str(spec).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise AuditError(f"--input-shape {spec!r} must be channels,height,width, e.g. '3,64,64' or '1,28,28'.")
    return shape  # type: ignore[return-value]


# --- model --------------------------------------------------------------------------------------------------

class Normalized(nn.Module):
    """`net` behind an input normalization, so AM works on images in [0, 1] (featvis reads `normalize`)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        from .base.models import Normalize
        self.normalize = Normalize(tuple(mean), tuple(std))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(spec: str) -> nn.Module:
    """`torchvision:NAME` (random init), `path/to/module.py:ClassName` or `package.module:ClassName` (the class
    is constructed without arguments)."""
    if ":" not in spec:
        raise AuditError(f"--model {spec!r}: write 'torchvision:NAME' (e.g. torchvision:resnet18), "
                         "'path/to/module.py:ClassName' or 'package.module:ClassName'.")
    source, name = spec.rsplit(":", 1)
    if source == "torchvision":
        import torchvision
        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else f" Known: {known[:12]} …"
            raise AuditError(f"--model {spec!r}: torchvision has no classification model {name!r}.{hint}")
        return torchvision.models.get_model(name, weights=None)
    path = Path(source)
    if path.suffix != ".py":  # an importable module, e.g. gsmu.base.models:MnistCNN
        try:
            module = importlib.import_module(source)
        except Exception as e:
            raise AuditError(f"--model {spec!r}: cannot import module {source!r} ({type(e).__name__}: {e}); give "
                             "'package.module:ClassName', 'path/to/module.py:ClassName' or 'torchvision:NAME'.") from e
    elif not path.is_file():
        raise AuditError(f"--model {spec!r}: {source!r} is not an existing .py file; give "
                         "'path/to/module.py:ClassName' or 'torchvision:NAME'.")
    else:
        module_spec = importlib.util.spec_from_file_location(f"_audit_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            raise AuditError(f"--model {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if cls is None:
        classes = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        raise AuditError(f"--model {spec!r}: {path} defines no {name!r}; its nn.Module classes: {classes}.")
    try:
        model = cls()
    except Exception as e:
        raise AuditError(f"--model {spec!r}: {name}() failed ({type(e).__name__}: {e}); the class must be "
                         "constructible without arguments.") from e
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model {spec!r}: {name}() is a {type(model).__name__}, not a torch nn.Module.")
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict (or a dict holding one under 'state_dict'/'model') with `weights_only=True`."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"--weights {path!r}: no such file.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AuditError(f"--weights {path!r} cannot be read as torch weights with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Save the model's state_dict "
                         "with torch.save(model.state_dict(), FILE).") from e
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AuditError(f"--weights {path!r} holds a {type(state).__name__}, not a state dict of tensors.")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise AuditError(f"--weights {path!r} does not fit the model: {str(e).strip()[:600]}") from e


def prepare_model(spec: str, weights: str | None, normalize: str) -> tuple[nn.Module, str]:
    """The model in eval mode, wrapped in an input normalization unless it has its own; and the layer prefix."""
    net = build_model(spec)
    if weights:
        load_weights(net, weights)
    net.eval()
    if normalize == "auto":
        normalize = "none" if hasattr(net, "normalize") else ("imagenet" if spec.startswith("torchvision:") else "none")
    if normalize == "none":
        return net, ""
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        try:
            mean_s, std_s = normalize.split("/")
            mean, std = tuple(float(v) for v in mean_s.split(",")), tuple(float(v) for v in std_s.split(","))
        except ValueError:
            raise AuditError(f"--normalize {normalize!r}: use auto, none, imagenet or MEANS/STDS such as "
                             "'0.1307/0.3081' or '0.5,0.5,0.5/0.25,0.25,0.25'.") from None
    return Normalized(net, mean, std).eval(), "net."


def check_layer_and_units(model: nn.Module, prefix: str, layer: str, units: list[int],
                          shape: tuple[int, int, int]) -> int:
    """Validate the layer (with did-you-mean), the input shape and the units by one forward pass."""
    inner = model.net if prefix else model
    try:
        featvis.get_layer(inner, layer)
    except ValueError:
        names = [n for n, _ in inner.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
        hint = f" Did you mean {close}?" if close else ""
        raise AuditError(f"--layer {layer!r} is not a module of {type(inner).__name__}.{hint} "
                         f"Layers are named_modules() paths, e.g. {names[-5:]}.") from None
    try:
        size = featvis.check_units(model, prefix + layer, [], shape)
    except ValueError as e:
        raise AuditError(f"--input-shape {','.join(map(str, shape))}: {e}") from None
    bad = [u for u in units if u >= size]
    if bad:
        raise AuditError(f"--units: unit(s) {bad[:10]} out of range; layer {layer!r} has {size} units "
                         f"(0-{size - 1}).")
    return size


# --- images -------------------------------------------------------------------------------------------------

def load_images(source: str, shape: tuple[int, int, int], limit: int) -> tuple[torch.Tensor, list[str]]:
    """Images of `source` (a folder, searched recursively, or 'mnist'/'cifar10' test images) as N×C×H×W in
    [0, 1], resized (shorter side) and centre-cropped to the model's input; and their names."""
    c, h, w = shape
    import torch.nn.functional as F
    if source in BUILTIN_IMAGES:
        from .base import data
        from .base import cifar
        x, _ = data.load_mnist("test") if source == "mnist" else cifar.shuffled("test")
        x = x[:limit].float()
        if x.max() > 1:
            x = x / 255.0
        if x.shape[1] != c:
            x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x
            x = x[:, :1] if c == 1 else x
        if x.shape[1] != c:
            raise AuditError(f"--images {source}: cannot turn its {x.shape[1]}-channel images into {c} channels.")
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x.contiguous(), [f"{source}:test[{i}]" for i in range(len(x))]
    folder = Path(source)
    if not folder.is_dir():
        raise AuditError(f"--images {source!r} is neither a folder nor one of {BUILTIN_IMAGES}.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise AuditError(f"--images {source!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the natural "
                         "images to compare against there, or leave --images out.")
    from PIL import Image
    from torchvision.transforms import functional as TF
    images, names, skipped = [], [], []
    for p in files[:limit]:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB")
                t = TF.center_crop(TF.resize(TF.pil_to_tensor(im), [h] if h == w else [h, w], antialias=True), [h, w])
        except Exception:
            skipped.append(p.name)
            continue
        images.append(t.float() / 255.0)
        names.append(str(p.relative_to(folder)))
    if not images:
        raise AuditError(f"--images {source!r}: none of its {len(files)} image files could be read "
                         f"(e.g. {skipped[:3]}).")
    x = torch.stack(images)
    if x.shape[1] != c:
        raise AuditError(f"--images: images have {x.shape[1]} channels, the model wants {c}.")
    return x, names


# --- the audit ----------------------------------------------------------------------------------------------

@dataclass
class Settings:
    """AM budget and audit threshold. The defaults keep torchvision's resnet18 at 3×64×64, 10 units, under two
    minutes on two CPU cores (153 CPU-seconds measured: about 80-100 s of wall time on two idle cores). A
    slingshot pulls AM along a long path (the paper's budget is 200 steps): raise `steps` for an audit
    that matters."""
    steps: int = 20
    inits: int = 1
    lr: float = 0.05
    k: int = 5
    threshold: float = 10.0
    seed: int = 0


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def run_audit(model: nn.Module, layer: str, units: list[int], shape: tuple[int, int, int],
              images: torch.Tensor | None, settings: Settings, progress: bool = False) -> tuple[dict, dict]:
    """All AM methods, natural examples, the ratio audit and agreement. Returns (report, images) where
    images maps 'fv/<method>' → U×C×H×W and 'natural' → U×k×C×H×W (for the HTML)."""
    s = settings
    timings, pictures, per_method = {}, {}, {}
    natural_values = None
    report: dict = {"units": units}
    if images is not None:
        t = time.perf_counter()
        k = min(s.k, len(images))
        idx, vals = featvis.natural_examples(model, layer, units, images, k=k)
        natural_values = vals.median(1).values
        pictures["natural"] = images[idx]
        report["natural"] = {"indices": idx.tolist(), "activations": vals.tolist(),
                             "median": natural_values.tolist()}
        timings["natural"] = time.perf_counter() - t
    for param, strategy in METHODS:
        name = f"{param}/{strategy}"
        if progress:
            print(f"  AM {name} …", file=sys.stderr, flush=True)
        t = time.perf_counter()
        res = featvis.visualize(model, layer, units, shape, n_inits=s.inits, param=param, strategy=strategy,
                                lr=s.lr, steps=s.steps, seed=s.seed)
        timings[name] = time.perf_counter() - t
        final = res.trajectory[-1].median(1).values  # per unit, over inits
        pictures[f"fv/{name}"] = res.images[:, 0].clamp(0, 1)
        entry = {"activation": final.tolist(), "start": res.trajectory[0].median(1).values.tolist()}
        if natural_values is not None:
            entry["ratio_to_natural"] = [float(f / n) if n > 0 else None for f, n in zip(final, natural_values)]
        per_method[name] = entry
    report["methods"] = per_method
    # the activation-ratio audit (gsmu.gs.metrics.audit) on units whose natural examples activate them positively
    if natural_values is not None:
        positive = [u for u, v in zip(units, natural_values.tolist()) if v > 0]
        t = time.perf_counter()
        result = (metrics.audit(model, layer, positive, images, k=min(s.k, len(images)), n_starts=s.inits,
                                steps=s.steps, threshold=s.threshold, seed=s.seed) if positive else {})
        timings["audit"] = time.perf_counter() - t
        report["audit"] = {
            "method": "gsmu.gs.metrics.audit: median final activation of pixel SGD+GC AM / median activation "
                      "of the unit's top-k natural examples; flagged above the threshold",
            "am": "/".join(AUDIT_METHOD), "steps": s.steps, "threshold": s.threshold,
            "units": {str(u): result.get(u, {"ratio": None, "flagged": None,
                                             "note": "natural examples do not activate it positively"})
                      for u in units},
            "flagged": [u for u in units if result.get(u, {}).get("flagged")],
        }
    else:
        report["audit"] = {"skipped": "no --images given: the activation-ratio audit compares AM with natural "
                                      "examples; pass --images DIR (or mnist/cifar10)."}
    # agreement between methods: FV image correlation (averaged over units) and activation spread per unit
    names = list(per_method)
    fvs = [pictures[f"fv/{n}"] for n in names]
    corr = [[float(torch.tensor([_correlation(a[u], b[u]) for u in range(len(units))]).nanmean())
             for b in fvs] for a in fvs]
    acts = torch.tensor([per_method[n]["activation"] for n in names])  # M×U
    spread = []
    for j in range(len(units)):
        col = acts[:, j]
        gap = float(col.max() - col.median())
        scale = float(col.abs().median()) or 1.0
        spread.append(gap / scale)
    report["agreement"] = {"methods": names, "fv_correlation": corr,
                           "activation_spread": {str(u): v for u, v in zip(units, spread)},
                           "note": "fv_correlation: Pearson correlation of the methods' FV images (first init), "
                                   "mean over units. activation_spread: (max − median) / |median| of the final "
                                   "activation across methods; a method that reaches far more than the others "
                                   "hints at a manipulated AM path."}
    report["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return report, pictures


# --- output -------------------------------------------------------------------------------------------------

def png_base64(image: torch.Tensor, min_size: int = 96) -> str:
    """A C×H×W image in [0, 1] as a base64 PNG, upscaled (nearest) to at least `min_size` pixels."""
    from PIL import Image
    arr = (image.detach().float().clamp(0, 1) * 255).round().byte()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    factor = max(1, math.ceil(min_size / max(im.size)))
    if factor > 1:
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(path: Path, report: dict, pictures: dict, image_names: list[str] | None) -> None:
    esc = html.escape
    units = report["units"]
    methods = list(report["methods"])
    audit = report["audit"]
    flagged = set(audit.get("flagged", []))
    rows = []
    for j, u in enumerate(units):
        a = audit.get("units", {}).get(str(u), {})
        ratio = a.get("ratio")
        verdict = ("FLAGGED" if a.get("flagged") else "passes") if ratio is not None else "n/a"
        cells = [f"<td><b>{u}</b><br>{esc(verdict)}<br>ratio {ratio:.3g}</td>" if ratio is not None
                 else f"<td><b>{u}</b><br>{esc(verdict)}</td>"]
        for m in methods:
            act = report["methods"][m]["activation"][j]
            cells.append(f'<td><img alt="FV {esc(m)} unit {u}" src="data:image/png;base64,'
                         f'{png_base64(pictures["fv/" + m][j])}"><br>{act:.3g}</td>')
        if "natural" in pictures:
            thumbs = "".join(f'<img class="nat" alt="natural example" title="{esc(image_names[i]) if image_names else i}" '
                             f'src="data:image/png;base64,{png_base64(img, 48)}">'
                             for i, img in zip(report["natural"]["indices"][j], pictures["natural"][j]))
            cells.append(f"<td>{thumbs}<br>median {report['natural']['median'][j]:.3g}</td>")
        rows.append(f'<tr class="{"flag" if u in flagged else ""}">' + "".join(cells) + "</tr>")
    head = "<th>unit</th>" + "".join(f"<th>{esc(m)}</th>" for m in methods) + \
           ("<th>natural examples (top-k)</th>" if "natural" in pictures else "")
    ag = report["agreement"]
    corr_rows = "".join("<tr><th>" + esc(a) + "</th>" + "".join(f"<td>{v:.2f}</td>" for v in row) + "</tr>"
                        for a, row in zip(ag["methods"], ag["fv_correlation"]))
    summary = (f"{len(flagged)} of {len(units)} units flagged: {sorted(flagged)}" if "flagged" in audit
               else esc(audit.get("skipped", "")))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Feature-visualization audit: {esc(report['model'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px;text-align:center;vertical-align:top;font-size:12px}} tr.flag{{background:#fdd}} img{{image-rendering:pixelated}}
img.nat{{margin:1px}}</style></head><body>
<h1>Feature-visualization audit</h1>
<p>Model <code>{esc(report['model'])}</code>, layer <code>{esc(report['layer'])}</code>, input {esc(str(report['input_shape']))},
{report['settings']['steps']} AM steps × {report['settings']['inits']} init(s).</p>
<p id="verdict"><b>Activation-ratio audit</b> (threshold {report['settings']['threshold']}): {summary}</p>
<p>{esc(audit.get('method', ''))}</p>
<h2>Feature visualizations (final activation below each image)</h2>
<table id="units"><tr>{head}</tr>{''.join(rows)}</table>
<h2>Agreement between methods</h2><p>{esc(ag['note'])}</p>
<table id="agreement"><tr><th></th>{''.join(f'<th>{esc(m)}</th>' for m in ag['methods'])}</tr>{corr_rows}</table>
<p>Seconds per stage: {esc(json.dumps(report['seconds']))}</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gsmu.audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="torchvision:NAME, path/to/module.py:ClassName or package.module:ClassName")
    p.add_argument("--weights", help="state dict saved with torch.save (loaded with weights_only=True)")
    p.add_argument("--layer", required=True, help="named_modules() path of the layer, e.g. fc or layer4")
    p.add_argument("--units", required=True, help="unit indices: '0-9', '3', '0,2,5-7'")
    p.add_argument("--images", help="folder of natural images (searched recursively), or mnist / cifar10")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--input-shape", default="3,64,64", help="channels,height,width of one input (default 3,64,64)")
    p.add_argument("--normalize", default="auto",
                   help="input normalization put in front of the model: auto (ImageNet for torchvision, none "
                        "for a model with its own `normalize`), none, imagenet, or MEANS/STDS")
    p.add_argument("--max-images", type=int, default=512, help="use at most this many images (default 512)")
    d = Settings()
    p.add_argument("--steps", type=int, default=d.steps, help=f"AM steps per method (default {d.steps})")
    p.add_argument("--inits", type=int, default=d.inits, help=f"random starts per unit (default {d.inits})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam step size (default {d.lr}; the audit's SGD+GC uses 0.1)")
    p.add_argument("--k", type=int, default=d.k, help=f"natural examples per unit (default {d.k})")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"flag a unit whose AM activation exceeds its natural examples' by this factor "
                        f"(default {d.threshold})")
    p.add_argument("--seed", type=int, default=d.seed)
    args = p.parse_args(argv)
    try:
        report, out = audit_command(args)
    except AuditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flagged = report["audit"].get("flagged")
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}"
          + (f"; flagged units: {flagged}" if flagged is not None else "; no --images, no ratio audit"))
    return 0


def audit_command(args: argparse.Namespace) -> tuple[dict, Path]:
    """Validate everything, then run the audit and write the report; returns (report, out folder)."""
    units = parse_units(args.units)
    shape = parse_shape(args.input_shape)
    for name, value, low in (("--steps", args.steps, 1), ("--inits", args.inits, 1), ("--k", args.k, 1),
                             ("--max-images", args.max_images, 1)):
        if value < low:
            raise AuditError(f"{name}={value} must be at least {low}.")
    if not (args.threshold > 1 and args.lr > 0):
        raise AuditError(f"--threshold={args.threshold} must be > 1 and --lr={args.lr} > 0.")
    model, prefix = prepare_model(args.model, args.weights, args.normalize)
    check_layer_and_units(model, prefix, args.layer, units, shape)
    images, names = (load_images(args.images, shape, args.max_images) if args.images else (None, None))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditError(f"--out {args.out!r} cannot be created: {e}") from e
    settings = Settings(steps=args.steps, inits=args.inits, lr=args.lr, k=args.k, threshold=args.threshold,
                        seed=args.seed)
    start = time.perf_counter()
    report, pictures = run_audit(model, prefix + args.layer, units, shape, images, settings, progress=True)
    report = {"model": args.model, "weights": args.weights, "layer": args.layer, "input_shape": list(shape),
              "images": args.images, "n_images": None if images is None else len(images),
              "image_names": names, "settings": asdict(settings), **report,
              "total_seconds": round(time.perf_counter() - start, 3)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_html(out / "report.html", report, pictures, names)
    return report, out


if __name__ == "__main__":
    sys.exit(main())
