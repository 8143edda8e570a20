"""Attention switches for torch.func transforms and second derivatives."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def fused_attention_off(model: torch.nn.Module):
    """timm's fused attention (scaled_dot_product_attention) has no vmap, forward-mode or double-backward
    rule on every device: off inside the block (the math path), restored afterwards, so the model's
    own training and evaluation keep it."""
    modules = [module for module in model.modules() if getattr(module, "fused_attn", False)]
    for module in modules:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in modules:
            module.fused_attn = True


@contextmanager
def math_attention(model: torch.nn.Module):
    """Attention as plain matrix products inside the block: timm's fused attention off, and a
    transformers model's attention implementation set to "eager". PyTorch's fused CPU attention
    kernel has no forward-mode derivative, which forward-over-reverse Hessian-vector products need."""
    models = [module for module in model.modules() if hasattr(module, "set_attn_implementation")
              and getattr(module.config, "_attn_implementation", "eager") != "eager"]
    previous = [module.config._attn_implementation for module in models]
    for module in models:
        module.set_attn_implementation("eager")
    try:
        with fused_attention_off(model):
            yield
    finally:
        for module, implementation in zip(models, previous):
            module.set_attn_implementation(implementation)
