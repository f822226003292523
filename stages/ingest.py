"""Ingest: the first pass-1 stage. Reads each listed source's bytes, hashes them and decodes
them through `optidel.imageio` (which owns every safety limit), one row per source.

Byte-identical sources are not marked here: which copy is "first" is decided at the barrier,
where the whole listing is known.
"""

from __future__ import annotations

import numpy as np

from optidel import imageio

from ..manifests import schema
from . import columns
from .execution import TASK


class Ingest:
    """LISTING_COLUMNS -> SOURCE_COLUMNS + IMAGE.

    source_id is the sha256 of the bytes whenever they were read (corrupt ones included), ""
    when they were not. A read failure is status missing; a file over max_bytes is refused
    unread as unsupported (its byte_size still reported)."""

    execution = TASK

    def __init__(self, config):
        # An IngestConfig (min_side, max_pixels, max_bytes); taken as is, so stages stay free of
        # the pipeline package.
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, images = [], []
        for i in range(len(batch[columns.URI])):
            row, image = self._ingest(
                input_index=int(batch[columns.INPUT_INDEX][i]),
                uri=str(batch[columns.URI][i]),
                member=str(batch[columns.MEMBER][i]),
                offset=int(batch[columns.OFFSET][i]),
                length=int(batch[columns.LENGTH][i]),
            )
            rows.append(row)
            images.append(image)
        out = columns.to_batch(rows, columns.SOURCE_COLUMNS)
        # Filled one by one: np.array(list_of_images) would stack equal shapes into one array.
        out[columns.IMAGE] = np.empty(len(images), dtype=object)
        for i, image in enumerate(images):
            out[columns.IMAGE][i] = image
        return out

    def _ingest(self, **listing) -> tuple[dict, np.ndarray]:
        row = dict(listing)
        try:
            data = imageio.read_bytes(listing["uri"], listing["offset"], listing["length"], self.config.max_bytes)
        except imageio.SourceTooLarge as exc:
            row.update(byte_size=exc.size, status=schema.UNSUPPORTED, error=exc.reason)
            return row, _no_image()
        except imageio.SourceReadError as exc:
            row.update(status=schema.MISSING, error=exc.reason)
            return row, _no_image()
        decoded = imageio.decode(data, max_pixels=self.config.max_pixels, min_side=self.config.min_side)
        row.update(
            source_id=imageio.sha256_hex(data),
            byte_size=len(data),
            width=decoded.width,
            height=decoded.height,
            mode=decoded.mode,
            format=decoded.format,
            status=decoded.status,
            error=decoded.error,
        )
        return row, decoded.image if decoded.image is not None else _no_image()


def _no_image() -> np.ndarray:
    return np.zeros((0, 0, 3), np.uint8)
