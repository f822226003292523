"""The per-source cap's groups (pipeline/selection/rows.py cap_groups): an image is its own
group; a video's frames share one group per window of select.video_cap_window_s seconds."""

from __future__ import annotations

import numpy as np

from optidel.pipeline.selection.rows import cap_groups
from optidel.stages import columns as C


def _sources(rows):
    uri, member, time, source_id = zip(*rows)
    return {
        C.URI: np.array(uri, dtype=object), C.MEMBER: np.array(member, dtype=object),
        C.FRAME_TIME: np.array(time, dtype=np.float64), C.SOURCE_ID: np.array(source_id, dtype=object),
    }


def test_frames_share_a_group_per_window_and_images_keep_their_own():
    nan = float("nan")
    rows = [
        ("a.mp4", "", 0.0, "f0"), ("a.mp4", "", 9.999, "f1"), ("a.mp4", "", 10.0, "f2"), ("a.mp4", "", 25.0, "f3"),
        ("b.tar", "x.mp4", 0.0, "f4"), ("b.tar", "y.mp4", 0.0, "f5"),
        ("c.jpg", "", nan, "i0"), ("d.jpg", "", nan, "i1"), ("e.jpg", "", nan, "i0"),
    ]
    groups = cap_groups(_sources(rows), window_s=10.0).tolist()
    assert groups[0] == groups[1] != groups[2] != groups[3] != groups[0]  # [0, 10), [10, 20), [20, 30)
    assert groups[4] != groups[5]  # two videos of one tar
    assert len(set(groups[:6])) == 5 and not set(groups[:6]) & set(groups[6:])
    assert groups[6:] == ["i0", "i1", "i0"]  # an image's group is its id, byte copies included


def test_a_wider_window_merges_groups():
    rows = [("a.mp4", "", t, f"f{t}") for t in (0.0, 5.0, 10.0, 15.0, 20.0)]
    assert len(set(cap_groups(_sources(rows), window_s=5.0).tolist())) == 5
    assert len(set(cap_groups(_sources(rows), window_s=10.0).tolist())) == 3
    assert len(set(cap_groups(_sources(rows), window_s=60.0).tolist())) == 1
