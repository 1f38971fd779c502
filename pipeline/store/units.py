"""Atomic units: a Zarr group written to a temporary folder beside its place, sealed (a checksum per chunk
file, seal.py), and committed by one rename; and reading a whole unit back."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from .layout import PART, TMP_PREFIX, UNIT_AXES, dimension_names, ensure_group, scratch
from .seal import seal

def _write_array(group: zarr.Group, name: str, value: np.ndarray) -> None:
    dims = dimension_names(name, value.ndim, UNIT_AXES.get(name, "video"))
    if value.dtype.kind in "UO":
        arr = group.create_array(name, shape=value.shape, dtype=str, dimension_names=dims)
        if value.size:
            arr[...] = value.astype(str)
        return
    rows = (max(1, (1 << 20) // max(1, value[:1].nbytes)) if value.ndim == 2
            else 1 << 22 if value.dtype == np.uint8 else 1 << 16)  # bytes (encoded files): 4 MB chunk files
    chunks = (max(1, min(rows, len(value))),) + value.shape[1:]  # no 1 MB chunk file for 3 rows
    arr = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks, compressors=None,
                             dimension_names=dims)
    if value.size:
        arr[...] = value


def write_unit(final: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict,
               replace: bool = False) -> bool:
    """Write a Zarr group to a temp dir beside ``final`` and rename it into place.

    Returns False if ``final`` already existed (another writer committed it first; contents are
    deterministic, so its copy is as good as ours) unless ``replace``.
    """
    final = Path(final)
    if (final.parent.parent / "zarr.json").is_file():  # inside a store: keep the hierarchy valid Zarr
        ensure_group(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    with scratch(tmp, final):
        group = zarr.open_group(str(tmp), mode="w")
        for name, value in arrays.items():
            _write_array(group, name, np.asarray(value))
        group.attrs.update(attrs)
    return commit(tmp, final, replace)


def commit(tmp: Path, final: Path, replace: bool = False) -> bool:
    """Seal a finished temp dir (a checksum per chunk file, see integrity.py) and rename it into place."""
    with scratch(tmp, final):
        seal(tmp)
    if replace and final.exists():
        trash = final.parent / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)  # a crash right here leaves the unit missing: it is recomputed
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
        return True
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def write_part(store: str | os.PathLike, part: int, group: str, rows: list, status, error, duration,
               dim: int, attrs: dict | None = None, replace: bool = False) -> bool:
    """Commit one (part, group) unit: each video's rows (None for a failed video) and its status. Rows of
    encoded files (an object array of bytes per video, e.g. JPEG frames) are stored as ``bytes`` (every file
    one after another) and ``data`` rows of each file's [start, end) in it."""
    encoded = any(x is not None and np.asarray(x).dtype == object for x in rows)
    if encoded:
        files = [f for x in rows if x is not None for f in x]
        rows = [np.zeros((0 if x is None else len(x), 2), np.int64) for x in rows]
        ends = np.cumsum([len(f) for f in files], dtype=np.int64)
        data = np.stack([ends - [len(f) for f in files], ends], axis=1) if files else np.zeros((0, 2), np.int64)
        extra = {"bytes": np.frombuffer(b"".join(files), np.uint8)}
    else:
        rows = [np.asarray(x, dtype=np.float16) if x is not None else np.zeros((0, dim), np.float16) for x in rows]
        data, extra = np.concatenate(rows), {}
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in rows])]).astype(np.int64)
    return write_unit(Path(store, "parts", PART.format(part), group), {
        "data": data, **extra, "offsets": offsets, "status": np.asarray(status, dtype=object),
        "error": np.asarray(error, dtype=object), "duration": np.asarray(duration, dtype=np.float64)},
        {"part": part, "group": group, **(attrs or {})}, replace=replace)


def read_unit(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    from .location import locate, zarr_location

    group = zarr.open_group(zarr_location(locate(path)), mode="r")
    out = {}
    for name, arr in group.arrays():
        value = arr[...]
        out[name] = value.astype(object) if value.dtype.kind == "T" else value  # zarr strings -> python str
    return out, dict(group.attrs)
