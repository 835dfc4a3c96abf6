"""``python -m fl_split.gossip`` (what ``torchrun -m fl_split.gossip`` starts on each rank): ``fl-split gossip``."""

import sys

from simulations.cli import main

sys.exit(main(["gossip", *sys.argv[1:]]))
