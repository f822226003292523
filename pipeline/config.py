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
from .selection.selectors import SELECTORS


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
    # One frame a second: frames of a scope video a second apart show the scene moved, while
    # the 25-30 within a second are near copies; and 10^4-10^5 procedure videos of 15-30 min
    # then give the 10^7-10^8 frames the pipeline is built for.
    video_fps: float = Field(1.0, gt=0, description="frames taken per second of video, by presentation time")
    video_max_frames: int | None = Field(None, ge=1, description="most frames taken from one video (null: no cap)")
    video_time_limit_s: float = Field(
        600.0, gt=0, description="decoding one video's frames in one batch stops after this many seconds"
    )


def selector_choices() -> list[str]:
    """Allowed values of selector: every registered selector."""
    return list(SELECTORS)


def proposer_choices() -> list[str]:
    """Allowed values of propose.proposer: `auto` and every registered proposer."""
    return [AUTO, *PROPOSERS]


def _one_of(value: str, choices: list[str]) -> str:
    # Checked against the registry when a config is built, so a selector or proposer registered
    # after this module was imported (a plugin, a test) is accepted too.
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return value


class ProposeConfig(Section):
    proposer: str = Field(
        AUTO, description="how key patches are proposed: a registered proposer (stages/propose.py), or auto"
    )
    # vit_tiny: a small image-size-256 architecture for tests and CPU smoke runs.
    sam_model: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"] = Field(
        "vit_b", description="SAM architecture (vit_tiny: a small one for tests and CPU smoke runs)"
    )
    sam_checkpoint: str | None = Field(None, description="SAM weights file (null: none)")
    # segment-anything's SamAutomaticMaskGenerator settings, under its own names.
    points_per_side: int = Field(16, ge=1, le=128, description="SAM: prompt grid points per side")
    points_per_batch: int = Field(64, ge=1, description="SAM: prompt points per model call")
    pred_iou_thresh: float = Field(0.86, ge=0.0, le=1.0, description="SAM: keep masks with predicted IoU above this")
    stability_score_thresh: float = Field(0.92, ge=0.0, le=1.0, description="SAM: keep masks more stable than this")
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="SAM: IoU above which mask boxes are suppressed")
    crop_n_layers: int = Field(0, ge=0, le=3, description="SAM: layers of image crops also prompted")
    min_mask_region_area: int = Field(0, ge=0, description="SAM: small disconnected regions removed, pixels")
    # Regions proposer (Felzenszwalb on a downscaled copy).
    regions_scale: float = Field(200.0, gt=0, description="regions: Felzenszwalb scale (larger, fewer regions)")
    regions_max_side: int = Field(256, ge=32, description="segment a copy no larger than this")
    # Key-patch filters, shared by both proposers.
    min_area_frac: float = Field(0.005, ge=0.0, le=1.0, description="smallest mask kept, fraction of the image")
    max_area_frac: float = Field(0.6, ge=0.0, le=1.0, description="largest mask kept, fraction of the image")
    max_patches_per_image: int = Field(16, ge=1, description="most key patches proposed per source")
    patch_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="IoU above which boxes merge")
    margin: float = Field(0.1, ge=0.0, le=1.0, description="square crop grows by this fraction")
    min_patch_side: int = Field(24, ge=1, description="smallest square crop side, source pixels")
    # Endoscopes (and many cameras) frame the scene in black, with burned-in text and overlay
    # boxes; the proxy finds those edges "hard", so crops mostly outside the view are dropped.
    max_dark_frac: float = Field(
        0.25, ge=0.0, le=1.0, description="drop a patch whose crop has more near-black pixels than this (1 keeps all)"
    )
    dark_level: int = Field(20, ge=0, le=255, description="a pixel is near-black when no channel exceeds this")
    # An MAE cannot learn to reconstruct glare, sensor noise, bubbles or compression blocks, so a
    # loss-based hardness score ranks such crops hardest; these gates drop them on physical
    # measures (stages/keypatch.py, GATES). Each limit is the strictest at which the gate drops
    # at most about 3% of the crops of real clean colonoscopy (kvasir-seg's originals), but the
    # frame-wide one: 0.2 would drop 3% of real frames whole, and it tied 0.3 on the bench; together,
    # on the dirty-pool bench, they lift the clean share of the selection from 0.58 to 0.80, and
    # on a clean pool they leave the downstream score where it was (docs/dirty-pool.md).
    max_bright_frac: float = Field(
        0.01, ge=0.0, le=1.0, description="drop a patch whose crop has more blown-out pixels than this (1 keeps all)"
    )
    bright_level: int = Field(250, ge=0, le=255, description="a pixel is blown out when every channel reaches this")
    max_noise_sigma: float | None = Field(
        6.0, ge=0.0,
        description="drop a patch whose estimated noise (Immerkaer 1996) is above this many grey levels (null: keep all)",
    )
    max_clipped_frac: float = Field(
        0.4, ge=0.0, le=1.0,
        description="drop a patch whose crop has more pixels with a channel at bright_level or above than this: "
        "over-exposure (1 keeps all)",
    )
    max_frame_clipped_frac: float = Field(
        0.3, ge=0.0, le=1.0,
        description="drop every patch of a frame whose lit pixels (a channel above dark_level) have more than this "
        "share with a channel at bright_level or above: frame-wide over-exposure (1 keeps all)",
    )
    max_blockiness: float | None = Field(
        2.0, ge=1.0,
        description="drop a patch whose block-edge ratio (keypatch.blockiness) is above this: heavy compression "
        "(null: keep all)",
    )

    @field_validator("proposer")
    @classmethod
    def _registered_proposer(cls, value: str) -> str:
        return _one_of(value, proposer_choices())

    @model_validator(mode="after")
    def _area_range(self):
        if self.min_area_frac >= self.max_area_frac:
            raise ValueError("propose.min_area_frac must be below propose.max_area_frac")
        return self


class MAEConfig(Section):
    """Shape and self-training of the proxy MAE (used when score.proxy == 'self')."""

    patch_size: int = Field(8, ge=2, description="ViT patch side, pixels")
    embed_dim: int = Field(128, ge=8, description="encoder width")
    depth: int = Field(4, ge=1, description="encoder blocks")
    num_heads: int = Field(4, ge=1, description="encoder attention heads")
    decoder_embed_dim: int = Field(64, ge=8, description="decoder width")
    decoder_depth: int = Field(2, ge=1, description="decoder blocks")
    decoder_num_heads: int = Field(4, ge=1, description="decoder attention heads")
    train_patches: int = Field(2048, ge=1, description="seeded sample of pool patches to train on")
    train_steps: int = Field(300, ge=0, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="crops per step")
    lr: float = Field(1.5e-3, gt=0, description="peak learning rate (warm-up, then cosine decay)")
    # Off by default: ranking by learnability did not select cleaner patches than the artefact
    # gates on the dirty-pool bench (docs/dirty-pool.md), and scoring under two checkpoints costs
    # one more masked forward pass per micro-batch (about 1.6x the score stage's CPU time). Where
    # on, 0.1 is the end of the warm-up: the proxy has learned colour and coarse shading, not yet
    # texture, and before it the loss still carries the random initialisation's; half the steps
    # ranked the dirty train pool's candidates alike (benchmarks/results/eval/dirty-learnability).
    early_fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the early checkpoint behind the pass-1 parts' score_early, as a fraction of "
        "train_steps (e.g. 0.1; null: none, score_early empty)",
    )


class ScoreConfig(Section):
    proxy: str = Field("self", description="'self' (train a small MAE on the pool) or a checkpoint file")
    image_size: int = Field(64, ge=16, description="patches are resized to this for the proxy")
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="fraction of the proxy's patches masked")
    masks_per_patch: int = Field(4, ge=1, description="R: random masks averaged per patch")
    shared_masks: bool = Field(
        False, description="every row gets the same R masks (PASS's consistent masks): scores differ by content only"
    )
    lowpass_sigma: float | None = Field(
        None,
        gt=0.0,
        description="score the reconstruction error of a Gaussian low-pass of the patch (sigma in proxy pixels), "
        "so detail no model predicts (sensor noise, compression blocks) is not hardness; null: the pixels",
    )
    mae: MAEConfig = Field(MAEConfig(), description="the self-trained proxy MAE (score.proxy = self)")


class SelectConfig(Section):
    clusters: int = Field(32, ge=1, description="k-means clusters of patch embeddings")
    near_duplicate_cosine: float = Field(
        0.95, ge=-1.0, le=1.0, description="patch embeddings of one cluster more similar than this are near-duplicates"
    )
    per_source_cap: int = Field(4, ge=1, description="most selected patches from one source")
    # At 5% and M = 4 the budget averages 0.2 patches a frame, 2 per 10 s of video at 1 fps: a
    # cap of 4 per 10 s lets a stretch take twice its share, then moves the selection along
    # the video. A cap per whole video would give an hour of footage what one photo gets.
    video_cap_window_s: float = Field(
        10.0, gt=0, description="a video's frames within one window of this many seconds share per_source_cap"
    )
    trim_top_frac: float = Field(0.01, ge=0.0, lt=1.0, description="hardest tail dropped as noise")
    kmeans_sample: int = Field(
        200_000,
        ge=1,
        description="k-means trains on a seeded sample of this many embeddings; a pool no larger "
        "trains on all of them, as an in-memory selection does (docs/cluster.md: what a sample changes)",
    )


class OutputConfig(Section):
    size: int = Field(224, ge=8, description="output image side, pixels")
    format: Literal["jpg", "png", "webp"] = Field("jpg", description="output image encoding")
    quality: int = Field(90, ge=1, le=100, description="jpg/webp quality")
    shard_max_count: int = Field(1000, ge=1, description="most samples per shard")
    shard_max_bytes: int = Field(1 << 30, ge=1024, description="largest shard, bytes")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    cpus_per_task: float | None = Field(
        None, gt=0, description="CPUs per Ray task; unset: one task per CPU, sharing what the actor pools leave"
    )
    cpus_per_actor: float = Field(0.5, gt=0, description="CPUs reserved per model actor")
    gpus_per_actor: float = Field(0.0, ge=0, description="0 = run models on the CPU")
    actors: int = Field(1, ge=1, description="model actors per GPU stage")
    model_batch_size: int = Field(8, ge=1, description="sources per call of a model stage")
    max_retries: int = Field(
        3, ge=0, description="retries of a task, or restarts of an actor, whose worker died; then the run stops"
    )


class Config(Section):
    seed: int = Field(0, ge=0, description="seeds every random choice: the same seed gives the same bytes")
    keep: float = Field(0.05, gt=0.0, le=1.0, description="fraction of the pool to output: ceil(keep * usable sources)")
    selector: str = Field(
        "optidel", description="a registered selector (pipeline/selection/selectors.py): random and dedup keep whole images"
    )
    mosaic: int = Field(4, description="M patches per output image: 1, 4, 9 or 16")
    overwrite: bool = Field(False, description="replace a non-empty OUT")
    ingest: IngestConfig = Field(IngestConfig(), description="reading and checking sources")
    propose: ProposeConfig = Field(ProposeConfig(), description="key patches: proposer and filters")
    score: ScoreConfig = Field(ScoreConfig(), description="the proxy's conditional entropy per patch")
    select: SelectConfig = Field(SelectConfig(), description="diversity constraints of the selection")
    output: OutputConfig = Field(OutputConfig(), description="output images and shards")
    ray: RayConfig = Field(RayConfig(), description="where and on how many workers the run goes")

    @field_validator("selector")
    @classmethod
    def _registered_selector(cls, value: str) -> str:
        return _one_of(value, selector_choices())

    @field_validator("mosaic")
    @classmethod
    def _mosaic_square(cls, value: int) -> int:
        if value not in (1, 4, 9, 16):
            raise ValueError("must be 1, 4, 9 or 16 (a square grid)")
        return value

    @property
    def grid(self) -> int:
        return math.isqrt(self.mosaic)

    def budget(self, n_ok: int) -> int:
        """Output samples for n_ok usable sources: ceil(keep * n_ok)."""
        # round() first so that 0.05 * 1000 = 50.000000000000004 does not become 51.
        return math.ceil(round(self.keep * n_ok, 9))


def load(
    path: str | Path | None = None,
    overrides: dict | None = None,
    sets: list[str] = (),
    flags: dict[str, str] | None = None,
) -> Config:
    """Config from an optional YAML file, then `overrides` (dotted keys from CLI flags, None
    values ignored), then `sets` ("dotted.key=yaml-value"). An error is one line naming where
    the bad value came from: the file and key, the flag (`flags` maps a dotted key to the flag
    that sets it), or `--set key`."""
    data: dict = {}
    given: dict[str, str] = {}  # dotted key -> where the user wrote it, for error messages
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else " ".join(str(exc).split())
            raise ConfigError(f"{path}: cannot read config: {reason}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
            given[key] = (flags or {}).get(key, f"config key {key}")
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: not a YAML value: {raw!r}") from exc
        _set_dotted(data, key, value)
        given[key] = f"--set {key}"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, given)) from None


def _set_dotted(data: dict, key: str, value) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key}: {part} is not a section")
        node = child
    node[leaf] = value


def _describe(exc: ValidationError, path, given: dict[str, str]) -> str:
    """pydantic's errors as one line: "--mosaic must be 1, 4, 9 or 16 (a square grid), not 5"."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if key in given:
            name = given[key]
        else:
            name = f"{path}: {key or 'config'}" if path else f"config key {key or '(top level)'}"
        if err["type"] == "extra_forbidden":
            parts.append(f"{name}: unknown key (`optidel config --defaults` lists them all)")
            continue
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Input ")
        value = err.get("input")
        if msg.startswith(("must", "should")) and not isinstance(value, (dict, list)):
            parts.append(f"{name} {msg}, not {value!r}")
        else:
            parts.append(f"{name}: {msg}")
    return "; ".join(parts)


def description(key: str) -> str | None:
    """The description of a dotted config key (a flag's help), or None."""
    model: type[BaseModel] = Config
    *parents, leaf = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].description


def to_yaml(config: Config) -> str:
    """The config as YAML that `load` reads back to the same config, every key preceded by its
    description as a comment."""
    return "\n".join(_yaml_lines(config, indent="")) + "\n"


def _yaml_lines(section: BaseModel, indent: str):
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if field.description:
            yield f"{indent}# {field.description}"
        if isinstance(value, BaseModel):
            yield f"{indent}{name}:"
            yield from _yaml_lines(value, indent + "  ")
        else:
            scalar = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()
            yield f"{indent}{name}: {scalar}"
