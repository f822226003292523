"""`optidel eval`'s settings, in one place: the harness runs on them and the CLI takes its
defaults from them. No torch here, so building the CLI's parser stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import DEFAULT_ALPHA


@dataclass(frozen=True)
class EvalConfig:
    size: int = 64
    model: str = "tiny"
    steps: int = 1000  # pre-training optimizer steps, the same for every arm
    batch_size: int = 64
    lr: float = 1.5e-3
    mask_ratio: float = 0.75
    probe_iterations: int = 100
    probe_l2: float = 1e-4
    finetune_every: int = 10  # the low-label fine-tune uses every n-th train pair
    finetune_seeds: int = 3  # the first n seeds also run the (slower) fine-tune
    finetune_steps: int = 300
    finetune_batch_size: int = 32
    finetune_lr: float = 5e-4
    seeds: int = 8
    alpha: float = DEFAULT_ALPHA
    split: str = "validation"  # the held-out split reported: "validation" or "test"
    test_fraction: float = 0.2
    validation_fraction: float = 0.125
    scratch: bool = True
    device: str = "auto"
    threads: int = 0  # torch CPU threads per process; 0 keeps torch's default
    jobs: int = 1  # units run side by side in this many processes
    pool: str = ""  # a short description of the pre-training pool, for the table
