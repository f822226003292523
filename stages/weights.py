"""Checkpoint helpers that need no torch, so that the driver can use them without importing it:
a checkpoint file's sha256, and why torch refused or failed to read one, in one line (for the
SAM and MAE loaders, which load tensors only)."""

from __future__ import annotations

import hashlib
import re

import fsspec


def file_sha256(path: str) -> str:
    """sha256 of a local file or fsspec URL, read in chunks."""
    with fsspec.open(str(path), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_error_reason(exc: BaseException) -> str:
    """torch wraps a weights_only refusal's reason (e.g. "Unsupported global: GLOBAL print ...")
    in paragraphs of advice about loading the file unsafely, which must not be passed on: the
    reason alone when there is one, else the error's first line."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", str(exc))
    if found:
        return found.group(1).strip()
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
