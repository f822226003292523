"""`optidel eval`'s settings, in one place: types, defaults, ranges, choices and help. The harness
runs on them and the CLI builds its flags from them (eval/command.py). A pydantic dataclass, so
it validates like the pipeline's config while the harness keeps dataclasses.asdict. No torch
here, so building the CLI's parser stays fast."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from .metrics import DEFAULT_ALPHA


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class EvalConfig:
    size: int = Field(64, ge=1, description="image side for pre-training and evaluation")
    model: Literal["tiny", "small", "base"] = Field("tiny", description="MAE shape")
    steps: int = Field(1000, ge=1, description="pre-training optimizer steps, equal for every arm")
    batch_size: int = Field(64, ge=1, description="pre-training batch")
    lr: float = Field(1.5e-3, gt=0, description="pre-training peak learning rate")
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    probe_iterations: int = Field(100, ge=1, description="L-BFGS iterations of the linear probe (the primary metric)")
    probe_l2: float = Field(1e-4, ge=0, description="the probe's L2 penalty on its weights")
    finetune_every: int = Field(
        10, ge=1, description="the low-label fine-tune (secondary metric) uses every N-th train pair"
    )
    finetune_seeds: int = Field(3, ge=0, description="the first N seeds also run the fine-tune (0: none)")
    finetune_steps: int = Field(300, ge=1, description="fine-tuning optimizer steps")
    finetune_batch_size: int = Field(32, ge=1, description="fine-tuning batch")
    finetune_lr: float = Field(5e-4, gt=0, description="fine-tuning peak learning rate")
    seeds: int = Field(8, ge=1, description="seeds 0..N-1, each fixing init, masks and data order for every arm")
    alpha: float = Field(DEFAULT_ALPHA, description="NormDEL's alpha")
    split: Literal["validation", "test"] = Field(
        "validation",
        description="the held-out split reported: choose settings on validation, run test once at the end "
        "(default validation; test with --test-only)",
    )
    test_fraction: float = Field(0.2, ge=0, lt=1, description="last fraction of --labeled by sorted name that tests")
    validation_fraction: float = Field(
        0.125, ge=0, lt=1, description="last fraction of the non-test pairs by sorted name that validates"
    )
    scratch: bool = Field(
        True, description="the control row: the same probe and fine-tune on random weights (default on)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models run")
    threads: int = Field(
        0, ge=0, description="torch CPU threads per process (0: torch's own choice; 1 on busy shared CPUs)"
    )
    jobs: int = Field(
        1, ge=1, description="units run side by side in this many processes (one torch thread each unless --threads)"
    )
    pool: str = Field(
        "", description="a short description of the pre-training pool for the table (default: the arms' pool sizes)"
    )
