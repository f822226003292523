"""The audit interface: manifest schema, output layout, verify, lineage, report. Importable
without torch or Ray."""

from .masks import decode_mask

__all__ = ["decode_mask"]
