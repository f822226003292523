"""An offline demo pool: "video frames" along seeded camera paths over the photos that
scikit-image ships. Consecutive frames overlap heavily, as endoscopy video frames do, so the
pool is as redundant as the reference setting and diversity constraints have work to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from optidel import seeding

# Photos bundled with scikit-image (no download): tissue, fundus, and everyday scenes.
PHOTOS = ("retina", "immunohistochemistry", "hubble_deep_field", "coffee", "astronaut", "chelsea", "rocket")


def build_pool(directory: Path, frames_per_photo: int = 30, frame_size: int = 320, seed: int = 0) -> list[Path]:
    """Write frames_per_photo JPEG frames per photo into `directory`; return their paths.
    Frames already there are kept as they are (a second demo resumes): each is written under a
    temporary name and renamed when whole, so a frame present is a complete one."""
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PHOTOS:
        paths = [directory / f"{name}-{index:03d}.jpg" for index in range(frames_per_photo)]
        written += paths
        if all(path.exists() for path in paths):
            continue
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        for path, frame in zip(paths, camera_path(photo, frames_per_photo, frame_size, seeding.rng(seed, name))):
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                Image.fromarray(frame).save(tmp, format="JPEG", quality=92)
                tmp.replace(path)
    return written


def camera_path(photo: np.ndarray, n: int, size: int, rng: np.random.Generator):
    """A smooth random walk of a square window (pan + zoom) over the photo."""
    h, w = photo.shape[:2]
    side_max = min(h, w)
    side_min = max(side_max // 3, 16)
    cx, cy, side = w / 2, h / 2, (side_min + side_max) / 2
    vx = vy = vs = 0.0
    for _ in range(n):
        vx, vy = 0.8 * vx + rng.normal(0, side_max * 0.02), 0.8 * vy + rng.normal(0, side_max * 0.02)
        vs = 0.8 * vs + rng.normal(0, side_max * 0.01)
        side = float(np.clip(side + vs, side_min, side_max))
        cx = float(np.clip(cx + vx, side / 2, w - side / 2))
        cy = float(np.clip(cy + vy, side / 2, h - side / 2))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(side)
        window = Image.fromarray(photo[y0 : y0 + s, x0 : x0 + s])
        yield np.asarray(window.resize((size, size), Image.Resampling.BICUBIC))
