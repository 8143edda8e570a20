"""A small CNN with BatchNorm for the 8x8 digits (about 25k parameters)."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def small_cnn(in_channels: int, num_classes: int, width: int) -> nn.Module:
    return nn.Sequential(
        conv_bn_relu(in_channels, width),
        conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2),
        conv_bn_relu(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )
