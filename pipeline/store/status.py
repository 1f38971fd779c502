"""``status/<group>``: every video's status of a group consolidated into one unit, rewritten after each
extraction, so trainers read one small unit at start-up instead of every part."""
from __future__ import annotations

import time

import numpy as np

from .layout import USABLE
from .reader import FeatureStore
from .units import write_unit


def write_status_index(store: FeatureStore, group: str) -> None:
    """Consolidate every video's status of ``group`` into ``status/<group>`` (trainers read it at start)."""
    written = time.time_ns()
    committed = store.committed(group)
    scan = store._scan(group)
    write_unit(store.path / "status" / group, {**scan, "ok": np.isin(scan["status"], USABLE),
                                               "clips_beyond": store.clips_beyond(scan["duration"])},
               {"parts": len(committed), "written_ns": written}, replace=True)
    store.forget(group)
