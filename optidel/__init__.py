"""optidel: offline dataset distillation following OptiDEL (arXiv 2408.07107)."""

__version__ = "0.1.0"
