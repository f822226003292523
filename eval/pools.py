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
from ..pipeline.demo import camera_path
from .labeled import Pair, load_image


POOL_RECORD = "optidel-video-pool.json"


def clip_length(seed: int, name: str, max_clip: int) -> int:
    """Frames in the clip of image `name`: log-uniform on [1, max_clip], seeded per image."""
    draw = seeding.rng(seed, "clip-length", name).uniform(0.0, math.log(max_clip + 1))
    return min(max_clip, int(math.exp(draw)))


def write_video_pool(train: list[Pair], directory: str | Path, frame_size: int, max_clip: int, seed: int) -> int:
    """Write every train image's clip as JPEG frames `{name}-{index:03d}.jpg` under
    `directory`; returns the number of frames. Same inputs and seed, same bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    derived_from = []
    for pair in train:
        data = pair.image.read_bytes()
        derived_from.append({"image": pair.image.name, "sha256": imageio.sha256_hex(data)})
        image = load_image(pair.image)
        n = clip_length(seed, pair.name, max_clip)
        path = camera_path(image, n, frame_size, seeding.rng(seed, "camera", pair.name))
        for index, frame in enumerate(path):
            Image.fromarray(np.ascontiguousarray(frame)).save(directory / f"{pair.name}-{index:03d}.jpg", quality=92)
            written += 1
    record = {"frame_size": frame_size, "max_clip": max_clip, "seed": seed, "derived_from": derived_from}
    (directory / POOL_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return written
