"""optidel: offline dataset distillation following OptiDEL (arXiv 2408.07107)."""

__version__ = "0.1.0"


def shards(out: str) -> list[str]:
    """The shard URLs of output directory `out`, in index order (from `out/index.json`): what
    webdataset, ray.data and HF datasets take, whatever the number of shards."""
    # Imported here: `import optidel` (the CLI's first step) stays free of pyarrow and fsspec.
    from .manifests.layout import shard_urls

    return shard_urls(out)
