"""Every model builds from its config and maps a batch to logits; pretrained weights load locally."""

import pytest
import timm
import torch

from msam.errors import ConfigError
from msam.models import build_model

CASES = [
    ("small_cnn", (1, 8, 8), 10, 2e4, 5e4),
    ("resnet18", (3, 32, 32), 10, 11e6, 12e6),
    ("resnet50", (3, 32, 32), 100, 23e6, 24e6),
    ("wrn28_10", (3, 32, 32), 10, 36e6, 37e6),
    ("imagenet_resnet50", (3, 64, 64), 1000, 25e6, 26e6),
    ("imagenet_wrn50_2", (3, 64, 64), 1000, 68e6, 69e6),
    ("vit_s32", (3, 64, 64), 1000, 22e6, 23e6),
    ("vit_b16", (3, 32, 32), 10, 85e6, 86e6),
]


@pytest.mark.parametrize("config_name, shape, classes, low, high", CASES, ids=[c[0] for c in CASES])
def test_model_builds_and_runs(make_cfg, config_name, shape, classes, low, high):
    cfg = make_cfg(f"model={config_name}")
    model = build_model(cfg.model, classes, shape).eval()
    size = sum(p.numel() for p in model.parameters())
    assert low <= size <= high, f"{config_name}: {size} parameters"
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, classes)


def test_cifar_resnet_keeps_32x32_resolution_in_the_stem(make_cfg):
    model = build_model(make_cfg("model=resnet18").model, 10, (3, 32, 32))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_vit_loads_a_local_checkpoint_and_adapts_head_and_size(make_cfg, tmp_path):
    source = timm.create_model("vit_small_patch32_224", pretrained=False, num_classes=1000)
    path = tmp_path / "vit_s32.pth"
    torch.save(source.state_dict(), path)
    cfg = make_cfg("model=vit_s32", f"model.checkpoint={path}")
    model = build_model(cfg.model, 10, (3, 64, 64))
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.head.out_features == 10 and model.pos_embed.shape[1] == 1 + (64 // 32) ** 2


def test_missing_checkpoint_is_a_one_line_error(make_cfg, tmp_path):
    cfg = make_cfg("model=vit_b16", f"model.checkpoint={tmp_path}/nope.safetensors")
    with pytest.raises(ConfigError, match="model.checkpoint not found"):
        build_model(cfg.model, 10, (3, 32, 32))


def test_a_vit_takes_images_of_any_channel_count(make_cfg):
    """timm builds 3-channel ViTs unless told otherwise: digits (1 channel) would fail at the first step."""
    model = build_model(make_cfg("model=vit_small").model, 10, (1, 8, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
