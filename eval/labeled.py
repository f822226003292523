"""A labeled set: a folder with `images/` and `masks/` holding files of the same names (the
extension may differ, e.g. x.jpg + x.png). Masks are binary: foreground where the grey level
(PIL's "L" conversion) is >= 128, so JPEG-compressed masks such as kvasir-seg's work.

The split is fixed by sorted name: the last `ceil(test_fraction * n)` pairs are the test split;
of the pairs before them, the last `ceil(validation_fraction * rest)` are the validation split
and the others train (kvasir-seg's 1000 at 0.2 and 0.125: the first 700 train, the next 100
validate, the last 200 test). Sorting by name, not by a seeded draw, makes the split the same on
every machine and easy to state. Validation is where every setting is chosen; test is run once.
Neither may be pre-trained on, so the pre-training pool is the train split alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from optidel import imageio

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_THRESHOLD = 128


class EvalError(ValueError):
    """A problem the user must fix; the message names the file or folder and the reason."""


@dataclass(frozen=True)
class Pair:
    name: str  # file stem, the sort key
    image: Path
    mask: Path


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]

    def held_out(self, which: str) -> list[Pair]:
        """The pairs a metric is reported on: "validation" or "test"."""
        if which not in SPLITS:
            raise EvalError(f"split {which!r}: expected one of {', '.join(SPLITS)}")
        held = self.validation if which == "validation" else self.test
        if not held:
            raise EvalError(f"the {which} split is empty (see --validation-fraction / --test-only)")
        return held


SPLITS = ("validation", "test")


def pairs(root: str | Path) -> list[Pair]:
    """Every image of root/images with its mask in root/masks, sorted by name."""
    root = Path(root)
    folders = {kind: root / kind for kind in ("images", "masks")}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise EvalError(f"{root}: a labeled set needs a folder {kind}/ ({folder} not found)")
    found = {kind: _by_stem(folder) for kind, folder in folders.items()}
    missing = sorted(found["images"].keys() - found["masks"].keys())
    if missing:
        raise EvalError(
            f"{folders['masks']}: no mask for {len(missing)} image(s), e.g. {found['images'][missing[0]].name}"
        )
    if not found["images"]:
        raise EvalError(f"{folders['images']}: no images")
    return [Pair(stem, found["images"][stem], found["masks"][stem]) for stem in sorted(found["images"])]


def split(
    root: str | Path, test_fraction: float, validation_fraction: float = 0.0, test_only: str | Path | None = None
) -> Split:
    """The fixed split of `root`. With `test_only`, that folder is the test split and all of
    root is split into train and validation."""
    everything = pairs(root)
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if not 0.0 <= fraction < 1.0 or (name == "test" and fraction == 0.0 and test_only is None):
            raise EvalError(f"{name} fraction {fraction} must lie in [0, 1) (test: above 0 unless --test-only)")
    if test_only is not None:
        test, rest = pairs(test_only), everything
    else:
        n_test = _tail(test_fraction, len(everything))
        test, rest = everything[-n_test:], everything[:-n_test]
    n_val = _tail(validation_fraction, len(rest))
    train, validation = rest[: len(rest) - n_val], rest[len(rest) - n_val :]
    if not train:
        raise EvalError(f"{root}: {len(everything)} pairs leave nothing to train on")
    return Split(train, validation, test)


def _tail(fraction: float, n: int) -> int:
    # round() first so that 0.2 * 1000 = 200.00000000000003 does not become 201.
    return math.ceil(round(fraction * n, 9))


def write_pool_list(split_: Split, path: str | Path) -> int:
    """Write the image paths that may be pre-trained on (the train split: never a validation
    or test image), one a line, as an `optidel run` list file; returns how many."""
    train = split_.train
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{p.image.resolve()}\n" for p in train))
    return len(train)


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) through the one safe decoder; a bad file is an EvalError naming it."""
    try:
        data = imageio.read_bytes(str(path))
    except imageio.SourceReadError as exc:
        raise EvalError(str(exc)) from exc
    decoded = imageio.decode(data, max_pixels=100_000_000, min_side=1)
    if decoded.image is None:
        raise EvalError(f"{path}: cannot use this image: {decoded.error}")
    return decoded.image


def load_mask(pair: Pair) -> np.ndarray:
    """Boolean (H, W) foreground of the pair's mask."""
    grey = np.asarray(Image.fromarray(load_image(pair.mask)).convert("L"))
    return grey >= MASK_THRESHOLD


def resized(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def load_resized(split_pairs: list[Pair], size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(images uint8 (N, S, S, 3), masks bool (N, S, S) at S, masks bool at native size)."""
    images, small, native = [], [], []
    for pair in split_pairs:
        image = load_image(pair.image)
        mask = load_mask(pair)
        if mask.shape != image.shape[:2]:
            raise EvalError(
                f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} "
                f"but its image is {image.shape[1]}x{image.shape[0]}"
            )
        images.append(resized(image, size))
        # Resize the grey mask smoothly, then threshold again: no staircase edges at small S.
        small.append(resized(mask.astype(np.uint8) * 255, size) >= MASK_THRESHOLD)
        native.append(mask)
    return np.stack(images), np.stack(small), native


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise EvalError(f"{folder}: two files named {path.stem} ({files[path.stem].name}, {path.name})")
        files[path.stem] = path
    return files
