"""The one validated configuration object: YAML file + CLI flags + `--set key=value` overrides.

Unknown keys and out-of-range values are errors that name the key (pydantic, extra="forbid").
Stages receive their own section (e.g. `config.propose`); they never import this module, so a
unit test may build a section directly: `ProposeConfig(points_per_side=4)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..stages.propose import AUTO, PROPOSERS
from ..stages.select import SELECTORS


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(Section):
    min_side: int = Field(32, ge=1, description="sources with a shorter side are too_small")
    max_pixels: int = Field(
        100_000_000, ge=1, description="decompression-bomb limit: larger declared sizes are refused"
    )
    max_bytes: int = Field(512 * 2**20, ge=1, description="larger files are refused unread")
    partition_size: int = Field(32, ge=1, description="sources per pass-1 partition (the unit a rerun resumes from)")


def selector_choices() -> list[str]:
    """Allowed values of selector: every registered selector."""
    return list(SELECTORS)


def proposer_choices() -> list[str]:
    """Allowed values of propose.proposer: `auto` and every registered proposer."""
    return [AUTO, *PROPOSERS]


def _one_of(value: str, choices: list[str], what: str) -> str:
    # Checked against the registry when a config is built, so a selector or proposer registered
    # after this module was imported (a plugin, a test) is accepted too.
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


class ProposeConfig(Section):
    proposer: str = Field(AUTO, description="a registered proposer (stages/propose.py), or auto")
    # vit_tiny: a small image-size-256 architecture for tests and CPU smoke runs.
    sam_model: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"] = "vit_b"
    sam_checkpoint: str | None = None
    # segment-anything's SamAutomaticMaskGenerator settings, under its own names.
    points_per_side: int = Field(16, ge=1, le=128)
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = Field(0.86, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.92, ge=0.0, le=1.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_n_layers: int = Field(0, ge=0, le=3)
    min_mask_region_area: int = Field(0, ge=0)
    # Regions proposer (Felzenszwalb on a downscaled copy).
    regions_scale: float = Field(200.0, gt=0)
    regions_max_side: int = Field(256, ge=32, description="segment a copy no larger than this")
    # Key-patch filters, shared by both proposers.
    min_area_frac: float = Field(0.005, ge=0.0, le=1.0)
    max_area_frac: float = Field(0.6, ge=0.0, le=1.0)
    max_patches_per_image: int = Field(16, ge=1)
    patch_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="IoU above which boxes merge")
    margin: float = Field(0.1, ge=0.0, le=1.0, description="square crop grows by this fraction")
    min_patch_side: int = Field(24, ge=1, description="smallest square crop side, source pixels")
    # Endoscopes (and many cameras) frame the scene in black, with burned-in text and overlay
    # boxes; the proxy finds those edges "hard", so crops mostly outside the view are dropped.
    max_dark_frac: float = Field(
        0.25, ge=0.0, le=1.0, description="drop a patch whose crop has more near-black pixels than this (1 keeps all)"
    )
    dark_level: int = Field(20, ge=0, le=255, description="a pixel is near-black when no channel exceeds this")

    @field_validator("proposer")
    @classmethod
    def _registered_proposer(cls, value: str) -> str:
        return _one_of(value, proposer_choices(), "proposer")

    @model_validator(mode="after")
    def _area_range(self):
        if self.min_area_frac >= self.max_area_frac:
            raise ValueError("propose.min_area_frac must be below propose.max_area_frac")
        return self


class MAEConfig(Section):
    """Shape and self-training of the proxy MAE (used when score.proxy == 'self')."""

    patch_size: int = Field(8, ge=2)
    embed_dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    decoder_embed_dim: int = Field(64, ge=8)
    decoder_depth: int = Field(2, ge=1)
    decoder_num_heads: int = Field(4, ge=1)
    train_patches: int = Field(2048, ge=1, description="seeded sample of pool patches to train on")
    train_steps: int = Field(300, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1.5e-3, gt=0)


class ScoreConfig(Section):
    proxy: str = Field("self", description="'self' (train a small MAE on the pool) or a checkpoint file")
    image_size: int = Field(64, ge=16, description="patches are resized to this for the proxy")
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    masks_per_patch: int = Field(4, ge=1, description="R: random masks averaged per patch")
    mae: MAEConfig = MAEConfig()


class SelectConfig(Section):
    clusters: int = Field(32, ge=1, description="k-means clusters of patch embeddings")
    near_duplicate_cosine: float = Field(0.95, ge=-1.0, le=1.0)
    per_source_cap: int = Field(4, ge=1, description="most selected patches from one source")
    trim_top_frac: float = Field(0.01, ge=0.0, lt=1.0, description="hardest tail dropped as noise")


class OutputConfig(Section):
    size: int = Field(224, ge=8, description="output image side, pixels")
    format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = Field(90, ge=1, le=100)
    shard_max_count: int = Field(1000, ge=1)
    shard_max_bytes: int = Field(1 << 30, ge=1024)


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    cpus_per_task: float | None = Field(
        None, gt=0, description="CPUs per Ray task; unset: one task per CPU, sharing what the actor pools leave"
    )
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="0 = run models on the CPU")
    actors: int = Field(1, ge=1, description="model actors per GPU stage")
    model_batch_size: int = Field(8, ge=1, description="sources per call of a model stage")
    max_retries: int = Field(
        3, ge=0, description="retries of a task, or restarts of an actor, whose worker died; then the run stops"
    )


class Config(Section):
    seed: int = Field(0, ge=0)
    keep: float = Field(0.05, gt=0.0, le=1.0)
    selector: str = Field("optidel", description="a registered selector (stages/select.py)")
    mosaic: int = Field(4, description="M patches per output image: 1, 4, 9 or 16")
    overwrite: bool = False
    ingest: IngestConfig = IngestConfig()
    propose: ProposeConfig = ProposeConfig()
    score: ScoreConfig = ScoreConfig()
    select: SelectConfig = SelectConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()

    @field_validator("selector")
    @classmethod
    def _registered_selector(cls, value: str) -> str:
        return _one_of(value, selector_choices(), "selector")

    @model_validator(mode="after")
    def _mosaic_square(self):
        if self.mosaic not in (1, 4, 9, 16):
            raise ValueError("mosaic must be 1, 4, 9 or 16 (a square grid)")
        return self

    @property
    def grid(self) -> int:
        return math.isqrt(self.mosaic)

    def budget(self, n_ok: int) -> int:
        """Output samples for n_ok usable sources: ceil(keep * n_ok)."""
        # round() first so that 0.05 * 1000 = 50.000000000000004 does not become 51.
        return math.ceil(round(self.keep * n_ok, 9))


def load(path: str | Path | None = None, overrides: dict | None = None, sets: list[str] = ()) -> Config:
    """Config from an optional YAML file, then `overrides` (dotted keys from CLI flags, None
    values ignored), then `sets` ("dotted.key=yaml-value"). Errors name file and key."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _set_dotted(data: dict, key: str, value) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[leaf] = value


def _describe(exc: ValidationError, path) -> str:
    where = f"{path}: " if path else ""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}config key {key}: {msg}")
    return "\n".join(lines)
