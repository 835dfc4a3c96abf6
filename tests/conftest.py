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

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # after OMP_NUM_THREADS, which torch reads when it starts

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
