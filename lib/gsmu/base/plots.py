"""Figures: image grids and a `savefig` that files every figure under the run's results folder."""
from __future__ import annotations

import re
import matplotlib.pyplot as plt
import torch

from .runtime import notebook_name, results_dir


def savefig(fig: plt.Figure, name: str) -> None:
    """Save `fig` as `$REPRO_RESULTS/figures/<notebook>_<name>.png`.

    Returns None on purpose: a returned path would print in notebooks (nbval ignores the trailing `;`).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = results_dir() / "figures" / f"{notebook_name()}_{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def image_grid(images: torch.Tensor, nrow: int, titles: list[str] | None = None,
               scale: float = 1.2, cmap: str = "gray") -> plt.Figure:
    """Show a batch of images (N×C×H×W, values in [0, 1]) as a grid with optional titles."""
    images = images.detach().cpu().clamp(0, 1)
    n = images.shape[0]
    ncol = nrow
    nrows = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(scale * ncol, scale * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap=cmap, vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
