"""The optimizer recipe shared by pre-training and fine-tuning: AdamW (betas 0.9/0.95, weight
decay 0.05 except biases and norms, as the MAE recipe), linear warm-up over the first tenth of
the steps, then cosine decay to zero, as stages/mae.train_proxy schedules the proxy."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def adamw_warmup_cosine(
    model: nn.Module, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, scheduler) for `steps` optimizer steps over the parameters that train."""
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
