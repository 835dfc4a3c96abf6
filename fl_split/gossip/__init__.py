"""Decentralized learning with compressed gossip: Malcom-PSGD and CHOCO-SGD (``fl-split gossip``)."""

from fl_split.gossip.node import soft_threshold
from fl_split.gossip.topology import TOPOLOGIES, TopologyError, make_topology, mixing_matrix

__all__ = ["TOPOLOGIES", "TopologyError", "make_topology", "mixing_matrix", "soft_threshold"]
