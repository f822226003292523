"""Why torch refused or failed to read a checkpoint, in one line (for the SAM and MAE loaders,
which load tensors only)."""

from __future__ import annotations

import re


def load_error_reason(exc: BaseException) -> str:
    """torch wraps a weights_only refusal's reason (e.g. "Unsupported global: GLOBAL print ...")
    in paragraphs of advice about loading the file unsafely, which must not be passed on: the
    reason alone when there is one, else the error's first line."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", str(exc))
    if found:
        return found.group(1).strip()
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
