"""`vseam run` under torchrun with one rank dying mid-way through the head search (for test_dist.py).

Rank DIST_KILL_RANK exits abruptly (os._exit, as a killed process would: no cleanup, no
message) when it starts ablating layer DIST_KILL_LAYER; the other ranks carry on until their
next collective fails.
"""

import os
import sys

from vseam_run.search import strategies

real = strategies._ablate_layer_rows


def dying(vlm, batch, hidden, layer, *args, **kwargs):
    if os.environ.get("RANK") == os.environ["DIST_KILL_RANK"] and layer == int(os.environ["DIST_KILL_LAYER"]):
        os._exit(9)
    return real(vlm, batch, hidden, layer, *args, **kwargs)


strategies._ablate_layer_rows = dying

from vseam_run.cli.main import cli  # noqa: E402

sys.exit(cli(sys.argv[1:]))
