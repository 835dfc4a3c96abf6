"""Test-session setup: one torch thread per process.

The suite runs on 2-core machines, often with several processes busy at once (Ray actors, spawned
ranks, flwr-serverapp / flwr-clientapp processes, ``compare --jobs`` workers) or next to other load.
A torch op split over 2 threads while the other core is busy waits for a time slice at every
parallel region: one backward pass of a 256 x 10 linear model on a batch of 32 took 54 ms with 2
threads and 0.5 ms with 1 (measured with one other busy process on a 2-core machine). Every process
the tests start inherits ``OMP_NUM_THREADS``; ``torch.set_num_threads`` covers this one. Code that
sets its own thread count (``fl-split ddp`` ranks, ``fl-split gossip``) still does. Set
``OMP_NUM_THREADS`` to run the tests with more threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray starts its workers (the virtual clients' actors) at niceness 15, below everything else. Next to the
# other pytest-xdist workers' CPU-bound tests they then got almost no CPU: a 10-client FL test that takes
# about 2 minutes alone took 550 s in the suite (measured). At 0 they get a fair share, as in a real run.
os.environ.setdefault("RAY_worker_niceness", "0")

import torch  # after OMP_NUM_THREADS, which torch reads when it starts

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


#: Files that run real Flower processes (SuperLink, SuperNodes, ``flwr run``, an installed wheel):
#: under pytest-xdist (``--dist loadgroup``, as ``pyproject.toml`` sets it) they run in one worker, one
#: at a time, so two deployments never compete; they mostly wait on Flower's polling and overlap with
#: the CPU-bound tests of the other workers. The files that start Flower's simulation engine (Ray) are
#: not grouped: in one worker they would take longer than the rest of the suite together.
_GROUPS = {"deploy": ("test_sl_deploy.py", "test_wheel.py"), "netns": ("test_netns.py",)}


#: Files whose module-scoped fixtures do expensive work (DDP ranks, a compare grid, BIRD and codec
#: statistics): all their tests go to one worker, so each fixture is built once, not once per worker.
_ONE_WORKER = (
    "test_ddp.py",
    "test_compare.py",
    "test_codec_bird.py",
    "test_codec_ordering.py",
    "test_compare_codec_error.py",
    "test_data_partition.py",
)


#: Files with the longest tests (Flower simulations and deployments, DDP and gossip ranks), measured:
#: they start first (after the ``slow`` tests), so that no worker begins one near the end while the
#: others have run dry.
_LONG_FIRST = (
    "test_sl_deploy.py",
    "test_netns.py",
    "test_fl.py",
    "test_checkpoint.py",
    "test_sl_flower.py",
    "test_gossip.py",
    "test_ddp.py",
    "test_bench_sl.py",
    "test_plugins.py",
    "test_sl_stream_flower.py",
    "test_ray_cluster.py",
    "test_sl_local_loss.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the long tests first (:data:`_LONG_FIRST`); put every test of a file of :data:`_GROUPS` in
    its group, and each file of :data:`_ONE_WORKER` in a group of its own (``xdist_group``).

    ``tryfirst``: the marks must be on the items before pytest-xdist's own hook of this name turns
    them into the node-id suffix its scheduler groups by. That suffix is also why pytest is held
    below 9.2 (``pyproject.toml``): 9.2 renamed the attribute pytest-xdist 3.8 writes it to, and the
    groups were silently ignored (test_ddp's module fixture was built in three workers).
    """

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is not None:
            return 0
        return 1 if item.path.name in _LONG_FIRST else 2

    items.sort(key=rank)  # stable: each file keeps its order
    for item in items:
        name = item.path.name
        group = next((g for g, files in _GROUPS.items() if name in files), name if name in _ONE_WORKER else None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def one_intra_op_thread() -> Iterator[None]:
    """Match Flower's virtual clients: Ray runs each (``num_cpus = 1``) with one intra-op thread.

    Results are bit-identical only for equal intra-op thread counts: with 2 threads here and 1 in
    the actor, the halves differ by 2.4e-5 after 12 steps (measured), from the order of float sums.
    Files that compare a Flower run with one in this process use it for every test (``pytestmark``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
