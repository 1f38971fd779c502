"""Concurrent writers: flock locks beside the store, read-modify-write of the root attributes (group
provenance) under them, and the removal of killed writers' temporaries."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .layout import TMP_PREFIX, read_json, write_json

class StoreLock:
    """flock-based locks in a file beside the store (never inside: the store stays pure Zarr). Released by
    the OS when the holder dies, so a killed run never leaves a stale lock.

    * ``run()``: held shared for a whole extraction. Returns True when no other extraction holds it, i.e. when
      this run may remove temporaries (they can only be debris of dead writers).
    * ``attrs()``: exclusive, around every read-modify-write of the root attributes."""

    def __init__(self, store: str | os.PathLike):
        store = Path(store)
        store.parent.mkdir(parents=True, exist_ok=True)
        self._run = open(store.parent / f".{store.name}.lock", "a+")

    def run(self, clean=None) -> bool:
        """Hold the run lock shared for the whole extraction; True when no other extraction held it. Only
        then, and only while holding it exclusively (no other run can be writing), ``clean()`` removes the
        debris of killed writers: a later cleaning would remove the live temporaries of runs started since."""
        import fcntl

        # decided under a gate: flock's exclusive -> shared downgrade is not atomic (the lock is dropped, then
        # retaken), and a run testing in that gap would think itself alone too
        with open(f"{self._run.name}.gate", "a+") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(self._run, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone and clean is not None:
                clean()
            fcntl.flock(self._run, fcntl.LOCK_SH)  # held for the whole run: later runs see it
        return alone

    def attrs(self):
        import fcntl

        @contextmanager
        def held():
            with open(f"{self._run.name}.attrs", "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
        return held()

    def close(self) -> None:
        self._run.close()


def update_root_attrs(store: str | os.PathLike, change) -> dict:
    """Rewrite the root ``zarr.json`` atomically with ``change(attributes)`` applied (call under
    StoreLock.attrs() when other writers may be running); returns the new attributes."""
    path = Path(store) / "zarr.json"
    meta = read_json(path)
    meta["attributes"] = change(dict(meta.get("attributes", {})))
    # a consolidated view (zarr.consolidate_metadata) lists the arrays of its day: every writing run passes
    # here, so it is dropped rather than left stale (zarr then reads the hierarchy itself)
    meta.pop("consolidated_metadata", None)
    write_json(path, meta)
    return meta["attributes"]


def record_failed_parts(store, ran: set[int], failures: dict[int, str]) -> None:
    """Root attribute ``failed_parts`` {part: why}: the parts of this run that failed as a whole, kept until a
    later run finishes them (`pipeline status` shows why a part is still pending)."""
    def change(attrs):
        old = {int(k): v for k, v in attrs.get("failed_parts", {}).items() if int(k) not in ran}
        attrs["failed_parts"] = {str(k): v for k, v in sorted({**old, **failures}.items())}
        return attrs
    lock = StoreLock(store.path)
    try:
        with lock.attrs():
            update_root_attrs(store.path, change)
    finally:
        lock.close()


def add_groups(store: str | os.PathLike, metas: dict[str, dict], precision: dict | None = None) -> dict:
    """Record the provenance of new feature groups in the root attributes (and, for them, how their precision
    was chosen: ``precision_choice``, the probe's figures); returns the root attributes."""
    def change(attrs):
        groups = dict(attrs.get("groups", {}))
        attrs["groups"] = {**groups, **{g: m for g, m in metas.items() if g not in groups}}
        if precision is not None:
            attrs["precision_choice"] = precision
        return attrs
    return update_root_attrs(store, change)


def clean_temporaries(store: str | os.PathLike) -> int:
    """Remove debris of killed writers: uncommitted temp dirs beside the store's units (and the store's own
    planning temp beside it). Only the levels where units live are listed, never the chunk files."""
    store = Path(store)
    places = [(store.parent, f"{TMP_PREFIX}{store.name}-")]
    if (store / "zarr.json").exists():  # never inside a folder that is not a store
        places.append((store, TMP_PREFIX))
    for sub in ("parts", "status", "text"):
        if (store / sub).is_dir():
            places += [(store / sub, TMP_PREFIX)]
    if (store / "parts").is_dir():
        places += [(d, TMP_PREFIX) for d in (store / "parts").iterdir() if d.is_dir()]
    n = 0
    for folder, prefix in places:
        if folder.is_dir():
            for d in folder.iterdir():
                if d.name.startswith(prefix) and d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
    return n
