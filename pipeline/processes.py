"""The one way mmcache starts processes: decoding workers and NVDEC's CPU share (pipeline/part.py), the trainers'
loader workers (trainers/loader.py).

They fork from a forkserver, never from the process that asks: that process may hold a CUDA context and runs
threads (Dask's, TensorBoard's, tqdm's, CUDA's), and a fork while another thread holds a lock can deadlock the
child (Python 3.12+ warns of it). The server starts once per process, importing every module of mmcache this
process has imported, so a child unpickles its work without importing anything. That also covers the main
script: multiprocessing runs it again in every child (as ``__mp_main__``), and a script that imports the
extractors, which import torchvision, paid 1.5 s for every loader (and every part) without the preload.
"""
from __future__ import annotations

import multiprocessing
import sys

PACKAGES = ("pipeline", "features", "trainers", "manifests")


def forkserver():
    """The forkserver context (its server preloads this process's mmcache modules when it starts: the first
    caller's modules then serve every later one)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted(m for m in sys.modules if m.partition(".")[0] in PACKAGES))
    return context


def start_early() -> None:
    """Start the server now, so that it imports (3 s on 2 cores) while this process does other work: the first
    child then forks at once (the server starts on the first child otherwise, which waits for it)."""
    from multiprocessing import forkserver as server

    forkserver()
    server.ensure_running()


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask's hook when a worker preloads this module
    """A Dask worker that preloads this module (workers whose tasks decode in processes) starts its server as
    it starts, beside the driver's planning and before its first part."""
    start_early()
