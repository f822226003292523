"""An offline demo pool: "video frames" along seeded camera paths over the photos that
scikit-image ships. Consecutive frames overlap heavily, as endoscopy video frames do, so the
pool is as redundant as the reference setting and diversity constraints have work to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from optidel import seeding
from optidel.camera_path import camera_path

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
