"""A worker of the local Dask cluster as it starts, before its first task (Dask's ``preload``).

It imports the part runner (torch, the decoders, Zarr) and what this run's extractors import only when built
(torchvision, transformers: the driver names them in MMCACHE_LATE_IMPORTS) with the garbage collector off, then
freezes what they made. Collections during those imports scan every object torch has made so far, again and
again; and at the worker's exit the last collections scan them all once more (a process holding torch took 0.4 s
to exit, 0.13 s frozen). On 2 cores, two workers: start 3.6-4.7 -> 3.1-3.7 s, the cluster's close 0.9-1.3 ->
0.2-0.3 s. What the imports made lives as long as the process, so nothing collectable is frozen.
"""
from __future__ import annotations

import gc
import importlib
import os

LATE_IMPORTS = "MMCACHE_LATE_IMPORTS"  # comma-separated module names


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask's hook: every local worker preloads this module
    """The imports, as the worker starts, beside the driver's planning. A late import that fails is left to the
    extractor's build, which says why (a failing preload would stop the worker with only "Nanny failed to start")."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module("pipeline.part")
        for name in filter(None, os.environ.get(LATE_IMPORTS, "").split(",")):
            try:
                importlib.import_module(name)
            except Exception:
                pass
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
