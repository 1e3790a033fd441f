"""The papers' architectures, with `named_modules()` names that read well in notebooks.

- `MnistCNN`: the Gradient Slingshots "6-layer CNN" for MNIST (conv16-5, conv32-5, fc 512-256-120-84-10).
- `vgg`: the VGG family (configurations A/B/C/D, width 8–64, BatchNorm) for 32×32 inputs, as in the
  Gradient Slingshots CIFAR-10 grid (VGG-9 = configuration A: 8 conv layers + 1 linear).
- `AuthorsCifarCNN` / `authors_cifar_cnn`: the Machine Unlearning authors' CIFAR-10 network of the label-
  poisoning repair (MU paper §6.3): six 3×3 conv layers of 128 channels with BatchNorm, a 512-unit dense
  layer with BatchNorm and a linear output.
- `CharLSTM`: the character language model of the unlearning paper's canary experiment.
- `LogisticRegression`: the convex model of the certified feature-unlearning experiments.

Image models take images in [0, 1] and normalize them in their first module (`normalize`), so a feature
visualization parameterization only has to produce images in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runtime import check_choice, check_int

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # over Fashion-MNIST's 60k training images
GRAYSCALE_STATS = {"mnist": (MNIST_MEAN, MNIST_STD), "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD)}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x − mean) / std with the statistics kept as (C, 1, 1) buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MnistCNN(nn.Module):
    """Gradient Slingshots' MNIST network: conv16-5, pool, conv32-5, pool, fc 512-256-120-84-10, ReLU."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, dataset: str = "mnist"):
        super().__init__()
        # each data set standardized by its own pixel statistics (`dataset`: "mnist" or "fashion_mnist")
        self.normalize = Normalize(*GRAYSCALE_STATS[check_choice("dataset", dataset, tuple(GRAYSCALE_STATS))])
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(512, 256)
        self.fc2 = nn.Linear(256, 120)
        self.fc3 = nn.Linear(120, 84)
        self.out = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling in channels-last layout: the CPU max-pool kernel is ~6x faster there, which makes the
        # slingshot's double backward ~20 % cheaper (bench/slingshot.py); the values are the same. ReLU after the
        # pool: the two commute exactly (ReLU is monotone), so outputs, gradients and HVPs are bitwise those of
        # conv -> ReLU -> pool (tested), on a quarter of the elements: a training step ~15 % faster here.
        x = F.relu(F.max_pool2d(self.conv1(self.normalize(x)).contiguous(memory_format=torch.channels_last), 2))
        x = F.relu(F.max_pool2d(self.conv2(x).contiguous(memory_format=torch.channels_last), 2)).flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.out(x)


# Channel counts at width 64; "M" is a 2×2 max-pool; (c, 1) a 1×1 convolution (configuration C).
VGG_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG for 32×32 inputs: `features` (conv-BN-ReLU blocks, five pools to 1×1) and a linear `classifier`."""

    input_shape = (3, 32, 32)

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, in_channels: int):
        super().__init__()
        self.normalize = Normalize(CIFAR_MEAN if in_channels == 3 else MNIST_MEAN,
                                   CIFAR_STD if in_channels == 3 else MNIST_STD)
        self.features = features
        self.classifier = nn.Sequential(nn.Linear(channels, num_classes))
        self.input_shape = (in_channels, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)).flatten(1))


def vgg(cfg: str = "A", width: int = 64, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG configuration `cfg` (A/B/C/D) with `width` channels in the first block (64 = the original)."""
    check_choice("cfg", cfg, VGG_CONFIGS)
    if width < 1:
        raise ValueError(f"width={width} must be a positive channel count (the papers use 8–64).")
    layers: list[nn.Module] = []
    c_in = in_channels
    for item in VGG_CONFIGS[cfg]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        c, k = item if isinstance(item, tuple) else (item, 3)
        c_out = max(1, c * width // 64)
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return VGG(nn.Sequential(*layers), c_in, num_classes, in_channels)


class AuthorsCifarCNN(nn.Module):
    """The MU authors' CIFAR-10 CNN (§6.3 label poisoning): three blocks of [conv3×3-ReLU-BN] × 2, 2×2 max-pool
    and dropout (0.1, 0.1, 0.2), then `fc` (2048 → 512) − ReLU − `bn` (BatchNorm1d) − `out` (512 → classes).

    The order conv → ReLU → BatchNorm is the authors' (their activation sits inside the conv layer, the
    BatchNorm after it). Their He-uniform initialization is kept for the conv and dense weights (biases 0).
    """

    input_shape = (3, 32, 32)

    def __init__(self, channels: int = 128, dense: int = 512, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        layers: list[nn.Module] = []
        c_in = 3
        for dropout in (0.1, 0.1, 0.2):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(channels)]
                c_in = channels
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * 4 * 4, dense)  # three pools: 32 → 4
        self.bn = nn.BatchNorm1d(dense)
        self.out = nn.Linear(dense, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # Keras' he_uniform: U(±sqrt(6 / fan_in)) = kaiming_uniform_ with the ReLU gain.
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x)).flatten(1)
        return self.out(self.bn(F.relu(self.fc(x))))


def authors_cifar_cnn(channels: int = 128, dense: int = 512, num_classes: int = 10) -> AuthorsCifarCNN:
    """The MU authors' CIFAR-10 CNN (`channels`=128 per conv layer, `dense`=512 units: the paper's sizes;
    smaller values give a cheaper network of the same shape)."""
    return AuthorsCifarCNN(check_int("channels", channels, 1), check_int("dense", dense, 1),
                           check_int("num_classes", num_classes, 2))


class CharLSTM(nn.Module):
    """Character language model: `embed` → `lstm` (batch-first) → `head`; logits N×T×vocab."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 512, num_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


class LogisticRegression(nn.Module):
    """Logistic regression: `linear`. Binary (n_classes=2) has ONE output, the logit of class 1
    (use `binary_cross_entropy_with_logits`); more classes give one logit per class (softmax)."""

    def __init__(self, n_features: int, n_classes: int = 2):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes} must be at least 2.")
        self.linear = nn.Linear(n_features, 1 if n_classes == 2 else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out.squeeze(-1) if out.shape[-1] == 1 else out
