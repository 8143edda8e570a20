"""Wide-ResNet-d-k for CIFAR (Zagoruyko & Komodakis 2016), pre-activation basic blocks."""

from __future__ import annotations

from torch import nn


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        needs_projection = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x):
        out = self.relu(self.bn1(x))
        # The projection takes the pre-activated input, as in the authors' implementation.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)]
        for stage in range(3):
            for block in range(blocks_per_stage):
                c_in = channels[stage] if block == 0 else channels[stage + 1]
                stride = 2 if (stage > 0 and block == 0) else 1
                layers.append(WideBlock(c_in, channels[stage + 1], stride, dropout))
        layers += [nn.BatchNorm2d(channels[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))
