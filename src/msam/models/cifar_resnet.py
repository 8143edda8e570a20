"""ResNet-18/50 for 32x32 images: torchvision's ResNet with a 3x3 stride-1 stem and no max-pool."""

from __future__ import annotations

from torch import nn

DEPTHS = {18: "resnet18", 50: "resnet50"}  # torchvision's builders, imported when used


def cifar_resnet(depth: int, in_channels: int, num_classes: int) -> nn.Module:
    from torchvision import models

    model = getattr(models, DEPTHS[depth])(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
