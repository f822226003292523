"""An offline demo pool: short videos, one per photo that scikit-image ships, each a seeded
camera path over its photo. Consecutive frames overlap heavily, as endoscopy video frames do,
so the pool is as redundant as the reference setting and diversity constraints have work to do;
and the first command a newcomer runs reads video, as the reference pools are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from optidel import seeding, video
from optidel.camera_path import camera_path

# Photos bundled with scikit-image (no download): tissue, fundus, and everyday scenes.
PHOTOS = ("retina", "immunohistochemistry", "hubble_deep_field", "coffee", "astronaut", "chelsea", "rocket")
# The demo's videos run at 5 frames a second, so the default sampling (ingest.video_fps = 1)
# takes every fifth frame: the pool shows sampling by time, not a copy of every frame.
VIDEO_FPS = 5
# H.264 at a fixed quality, a keyframe every 2 s, one thread, and x264's plain C code: with its
# assembly, x264 wrote different bytes for the same frames from run to run (this wheel's x264
# 165). Without assembly only its fastest preset keeps the pool's build to a few seconds.
ENCODER_OPTIONS = {"crf": "20", "preset": "ultrafast", "threads": "1", "g": str(2 * VIDEO_FPS), "x264-params": "asm=0"}


def build_pool(directory: Path, frames_per_photo: int = 30, frame_size: int = 320, seed: int = 0) -> list[Path]:
    """Write one H.264 .mp4 per photo into `directory`, long enough that frames_per_photo frames
    are sampled from it at one a second; return their paths. A video already there is kept as
    it is (a second demo resumes): each is written under a temporary name and renamed when
    whole, so a video present is a complete one."""
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PHOTOS:
        path = directory / f"{name}.mp4"
        written.append(path)
        if path.exists():
            continue
        photo = _photo(getattr(skimage.data, name)(), 2 * frame_size)
        frames = camera_path(photo, frames_per_photo * VIDEO_FPS, frame_size, seeding.rng(seed, name))
        tmp = path.with_name(path.name + ".tmp")
        video.encode(tmp, frames, codec="libx264", rate=VIDEO_FPS, pix_fmt="yuv420p", options=ENCODER_OPTIONS,
                     container_format="mp4")
        tmp.replace(path)
    return written


def _photo(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """RGB, its shorter side at most max_side: a camera window is at most the shorter side and
    is resized to the frame size, so a larger photo only makes each of the video's frames
    slower to cut (retina's 1411 px: most of the pool's build time)."""
    image = Image.fromarray(pixels).convert("RGB")
    scale = max_side / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(image)

