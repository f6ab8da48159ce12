"""The write-up's findings that need runs of their own, outside the ladder: `ddpmlab reproduce`
runs each at the size its budget gives (budgets.py) and writes OUT/studies/NAME.json and figures,
which `report` reads (findings.read_studies).

    init        (g) does resnet-basic start badly because of its initialisation?
    good_bugs   (h) the UNet's two good bugs switched back on, against the correct network
    collapse    (f) long BatchNorm-UNet runs under the collapse monitor, then sampling ablations

Each is `run(out, *, command, progress, **size) -> dict` and resumes or skips what is done.
"""
from __future__ import annotations

from . import collapse, good_bugs, init

STUDIES = {"init": init.run, "good_bugs": good_bugs.run, "collapse": collapse.run}
