"""The weight-free proposer's Ray workers never import torch: they would pay seconds of start-up
and ~800 MB each for nothing (issue 6). Checked in a fresh interpreter, as a worker starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_regions_pass1_stages_run_without_importing_torch(kvasir):
    script = textwrap.dedent(
        f"""
        import sys
        from optidel.pipeline.config import IngestConfig, ProposeConfig
        from optidel.pipeline.inputs import list_sources
        from optidel.pipeline.pass1_stages import IsolatedPropose
        from optidel.stages import columns as C
        from optidel.stages.ingest import Ingest

        refs = list_sources(sorted(str(p) for p in __import__("pathlib").Path({str(kvasir / "images")!r}).glob("*.jpg"))[:2])
        rows = [dict(input_index=i, uri=r.uri, member=r.member, offset=r.offset, length=r.length) for i, r in enumerate(refs)]
        out = IsolatedPropose(ProposeConfig(proposer="regions"), 64)(Ingest(IngestConfig())(C.to_batch(rows, C.LISTING_COLUMNS)))
        patches = int((out[C.PATCH_INDEX] >= 0).sum())
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "segment_anything") if m in sys.modules)
        print(patches, heavy)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    patches, heavy = done.stdout.split(" ", 1)
    assert int(patches) > 0  # the regions path really ran
    assert heavy.strip() == "[]"


def test_ingest_and_propose_one_source_at_a_time_gives_the_batch_stages_rows(kvasir, tmp_path):
    """The weight-free path's fused task equals Ingest then IsolatedPropose on the whole batch,
    a corrupt source included."""
    import numpy as np

    from optidel.pipeline.config import IngestConfig, ProposeConfig
    from optidel.pipeline.inputs import list_sources
    from optidel.pipeline.pass1_stages import IngestAndPropose, IsolatedPropose
    from optidel.stages import columns as C
    from optidel.stages.ingest import Ingest

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    paths = [str(p) for p in sorted((kvasir / "images").glob("*.jpg"))[:3]]
    refs = list_sources([paths[0], str(corrupt), *paths[1:]])
    rows = [dict(input_index=i, uri=r.uri, member=r.member, offset=r.offset, length=r.length) for i, r in enumerate(refs)]
    batch = C.to_batch(rows, C.LISTING_COLUMNS)
    ingest, propose = {"config": IngestConfig()}, {"config": ProposeConfig(proposer="regions"), "crop_size": 64}

    fused = IngestAndPropose(ingest, propose)(batch)
    staged = IsolatedPropose(**propose)(Ingest(**ingest)(batch))
    assert sorted(fused) == sorted(staged)
    for name in staged:
        np.testing.assert_array_equal(fused[name], staged[name], err_msg=name)  # NaN sentinels equal
    assert set(fused[C.STATUS][fused[C.PATCH_INDEX] < 0]) == {"ok", "corrupt"}
    assert (fused[C.PATCH_INDEX] >= 0).sum() > 0
