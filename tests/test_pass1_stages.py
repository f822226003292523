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
