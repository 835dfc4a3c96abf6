"""``python -m fl_split.ddp`` (what ``torchrun -m fl_split.ddp`` starts on each rank): ``fl-split ddp``."""

import sys

from simulations.cli import main

sys.exit(main(["ddp", *sys.argv[1:]]))
