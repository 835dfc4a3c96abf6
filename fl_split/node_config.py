"""A Flower node's data partition from its node config (simulation sets it; deployment: ``--node-config``)."""

from __future__ import annotations

from collections.abc import Mapping


def node_partition(node_config: Mapping[str, object]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from a node config; ``ValueError`` saying how to set them."""
    try:
        pid, num = int(str(node_config["partition-id"])), int(str(node_config["num-partitions"]))
    except (KeyError, ValueError):
        raise ValueError(
            f"this node's config {dict(node_config)} lacks integer 'partition-id' and 'num-partitions': "
            'start the SuperNode with --node-config "partition-id=0 num-partitions=2" (simulation sets them)'
        ) from None
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, num-partitions={num})")
    return pid, num
