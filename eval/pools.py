"""The pre-training pools of the reference benchmark, built from a labeled set's train split.

- plain: the train images themselves (`write_pool_list`).
- video: each train image becomes a "clip" of frames along a seeded camera path (pan and zoom,
  the generator of `optidel demo`), so consecutive frames overlap heavily, as endoscopy video
  frames do. Real recordings are uneven: a scope lingers for seconds in one place and passes
  another in a few frames, so clip lengths are drawn log-uniformly from 1 to `max_clip`
  frames. A random 5% of such a pool over-samples the long clips; that redundancy is the room
  a selector has to win in (arXiv 2401.17542 drew its 88k frames from such videos).

Only train images are used: validation and test images never enter a pool. Frames are new
files (crops, re-encoded), so the pool directory also holds POOL_RECORD, the sha256 of every
image its frames come from: `optidel eval` refuses an arm whose pool derives from a held-out
image (arms.check_no_held_out_images). `optidel run` lists images only and ignores it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from optidel import imageio, seeding
from optidel.camera_path import camera_path
from .labeled import Pair, load_image


POOL_RECORD = "optidel-video-pool.json"


def clip_length(seed: int, name: str, max_clip: int) -> int:
    """Frames in the clip of image `name`: log-uniform on [1, max_clip], seeded per image."""
    draw = seeding.rng(seed, "clip-length", name).uniform(0.0, math.log(max_clip + 1))
    return min(max_clip, int(math.exp(draw)))


def clips(pairs: list[Pair], frame_size: int, max_clip: int, seed: int):
    """(pair, its clip's frames as uint8 RGB arrays) for every pair, in order."""
    for pair in pairs:
        n = clip_length(seed, pair.name, max_clip)
        path = camera_path(load_image(pair.image), n, frame_size, seeding.rng(seed, "camera", pair.name))
        yield pair, [np.ascontiguousarray(frame) for frame in path]


def frame_name(pair: Pair, index: int) -> str:
    return f"{pair.name}-{index:03d}.jpg"


def save_frame(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame).save(path, quality=92)


def write_record(directory: Path, pairs: list[Pair], **settings) -> None:
    """POOL_RECORD: the settings, and the sha256 of every image the frames derive from."""
    derived_from = [{"image": p.image.name, "sha256": imageio.sha256_hex(p.image.read_bytes())} for p in pairs]
    record = {**settings, "derived_from": derived_from}
    (directory / POOL_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def write_video_pool(train: list[Pair], directory: str | Path, frame_size: int, max_clip: int, seed: int) -> int:
    """Write every train image's clip as JPEG frames `{name}-{index:03d}.jpg` under
    `directory`; returns the number of frames. Same inputs and seed, same bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for pair, frames in clips(train, frame_size, max_clip, seed):
        for index, frame in enumerate(frames):
            save_frame(frame, directory / frame_name(pair, index))
            written += 1
    write_record(directory, train, frame_size=frame_size, max_clip=max_clip, seed=seed)
    return written
