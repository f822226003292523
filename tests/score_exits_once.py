"""`optidel run` whose Score stage kills its own worker mid-batch, once: the fault of
tests/test_faults.py and benchmarks/reliability.py, injected here rather than in the product.

    python tests/score_exits_once.py MARKER run ...   (the optidel command line after MARKER)

The first Score call on any worker that finds no file at MARKER creates it and exits its
process, as a crash would. The wrapper class is defined in __main__, so Ray ships it to its
workers by value."""

from __future__ import annotations

import os
import sys

from optidel.pipeline import cli, pass1
from optidel.pipeline.pass1_stages import ScoreInActor


class ScoreExitsOnce(ScoreInActor):
    marker = sys.argv[1]

    def __call__(self, batch):
        try:
            open(self.marker, "x").close()
        except FileExistsError:
            return super().__call__(batch)
        os._exit(1)


if __name__ == "__main__":
    pass1.ScoreInActor = ScoreExitsOnce
    sys.exit(cli.main(sys.argv[2:]))
