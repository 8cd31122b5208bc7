"""The HyperSparse paper's networks: CIFAR ResNet-20/32/56 (and ResNet-32 at doubled widths), CIFAR VGG-19 with
BatchNorm, and LeNet-300-100.

Example:
    >>> import torch
    >>> net = cifar_resnet(20, num_classes=10, in_chans=3)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, check_finite, check_positive_int

# configuration E as the HyperSparse reference's CIFAR VGG builds it: four max-pools, none after the last block
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


def positive_int(name: str, value: int) -> int:
    """``value`` as an int if it is a whole number >= 1 (numpy integers included), else a :class:`ConfigError`."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    return check_positive_int(name, value)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN projection on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, §4.2): depth = 6n + 2, three stages of n basic blocks."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be a whole number 6n+2 (8, 14, 20, 32, 56, ...), got {depth!r}")
        depth = int(depth)
        n = (depth - 2) // 6
        in_chans = positive_int("in_chans", in_chans)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise ConfigError(f"widths must be a sequence of positive integers (one per stage), got {widths!r}")
        widths = [positive_int("each of widths", w) for w in widths]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (stage > 0 and i == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layers(x)).flatten(1))


class CifarVGG(nn.Module):
    """VGG-19 with BatchNorm for small images, as in the HyperSparse reference code; ``width`` scales every layer's
    channels.

    Configuration E (16 convs) with four 2x2 max-pools — none after the last block — then average pooling over the
    remaining map and one Linear classifier. Every conv is 3x3 with a bias and followed by BatchNorm and ReLU.
    ``AdaptiveAvgPool2d(1)`` is the reference's fixed average pool at its image sizes: the map left after four
    pools is 2x2 at 32 px (the reference's ``AvgPool2d(2)``) and 4x4 at 64 px (its ``AvgPool2d(4)``); other sizes
    are averaged over whatever remains. Pools use ``ceil_mode=True`` so 28-px inputs shrink 28 → 14 → 7 → 4 → 2
    (the same as floor at 32 and 64 px).

    Initialisation as the reference: conv weights He-normal N(0, 2/(3·3·in_channels)) (``kaiming_normal_`` in
    ``fan_in`` mode; the reference computes n = k·k·in_channels) with zero bias, BatchNorm weight 1 and bias 0,
    Linear weights N(0, 0.01²) with zero bias.

    Example:
        >>> import torch
        >>> net = CifarVGG(num_classes=10, width=0.125)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, cfg: Sequence = VGG19_CFG):
        super().__init__()
        in_chans = positive_int("in_chans", in_chans)
        check_finite("width", width, low=0, low_inclusive=False)
        self.num_classes = num_classes
        layers, cin = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28 px inputs shrink to 2x2, never to 0x0
            else:
                c = max(1, int(round(v * width)))
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=True), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected 300-100 network on the flattened image."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28):
        super().__init__()
        in_chans, image_size = positive_int("in_chans", in_chans), positive_int("image_size", image_size)
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_chans * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def cifar_resnet(depth: int, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (16, 32, 64),
                 **options) -> CifarResNet:
    """A :class:`CifarResNet` of ``depth`` layers; any other option (a misspelt ``widths``, VGG's ``width``) is
    refused rather than dropped, which would build the default network.

    Example:
        >>> cifar_resnet(20, num_classes=5, widths=(8, 16, 32)).fc.out_features
        5
    """
    if options:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(options))} for a CIFAR ResNet; it takes depth, "
                          f"num_classes, in_chans and widths")
    return CifarResNet(depth, num_classes, in_chans, widths)
