"""A video pool's clips as recordings: each clip's frames in one lossless video, so that a run
over the pool knows which frames are one recording, as it does for real video, and the
per-recording cap (`select.video_cap_window_s`) applies. A folder of frames says nothing of
the sort: there every frame is its own source and takes `per_source_cap` patches alone.

Each clip `{clip}-{index:03d}.jpg, ...` becomes `{clip}.mkv`: FFV1 (lossless), one frame a
second, so the default sampling (`ingest.video_fps = 1`) takes frame k at k seconds and decodes
exactly the pixels of the JPEG it replaces; the JPEGs go. Matroska's muxer writes a random
segment id unless told to be bit-exact, so the flag keeps a pool's bytes a function of its seed.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image

from optidel import video

RECORDING_FPS = 1
_CONTAINER_OPTIONS = {"fflags": "+bitexact"}
_ENCODER_OPTIONS = {"threads": "1"}


def clip_of(frame: str) -> str:
    """The clip a frame file `{clip}-{index:03d}.jpg` belongs to (pools.frame_name)."""
    return frame.rsplit("-", 1)[0]


def frame_of(recording: str, index: int) -> str:
    """The frame file that frame `index` of the recording `{clip}.mkv` replaced."""
    return f"{Path(recording).stem}-{index:03d}.jpg"


def encode_recordings(directory: str | Path) -> int:
    """Replace the JPEG frames under `directory` by one video per clip; returns the videos written."""
    directory = Path(directory)
    frames = sorted(p.name for p in directory.glob("*.jpg"))
    written = 0
    for clip, names in groupby(frames, key=clip_of):
        names = list(names)
        if names != [frame_of(clip, index) for index in range(len(names))]:
            raise ValueError(f"{directory / names[0]}: clip {clip}'s frames are not numbered 000, 001, ... in a row")
        pixels = [np.asarray(Image.open(directory / name).convert("RGB")) for name in names]
        # bgr0: the RGB planes as they are, no colour conversion, so no loss.
        video.encode(directory / f"{clip}.mkv", pixels, codec="ffv1", rate=RECORDING_FPS, pix_fmt="bgr0",
                     options=_ENCODER_OPTIONS, container_format="matroska", container_options=_CONTAINER_OPTIONS)
        for name in names:
            (directory / name).unlink()
        written += 1
    return written

