"""Checksums of committed data, and what readers check (verify.py re-reads it all).

Every array mmcache writes is *sealed* when its unit commits: the array's own ``zarr.json`` gets the
attribute ``mmcache_crc32`` = {chunk file: [bytes, CRC-32]} for every chunk file it has (the store stays
plain Zarr). Readers use the list to tell a deleted chunk (an error) from one Zarr never wrote (all fill
value) and refuse a chunk of the wrong size; :func:`verify` re-reads every chunk file, and checks each
unit's shapes and offsets against the plan.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from .layout import read_json, write_json
from .location import walk

CRC_KEY = "mmcache_crc32"
BLOCK = 1 << 24


def offsets_problem(offsets: np.ndarray, rows: int, want: int) -> str | None:
    """Why ``offsets`` cannot index ``rows`` rows as ``want - 1`` runs, or None when they can."""
    if len(offsets) != want:
        return f"{len(offsets)} offsets, the plan needs {want}"
    if len(offsets) and (offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != rows):
        return f"offsets are not 0..{rows} non-decreasing, so they cannot index {rows} rows"
    return None


def crc32(path: Path) -> tuple[int, int]:
    """(bytes, CRC-32) of a file, read in 16 MB blocks."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return size, crc


def arrays_under(path: Path):
    """Every Zarr array folder at or under ``path`` (folders holding a zarr.json with node_type array)."""
    for folder, dirs, files in walk(path):
        if "zarr.json" in files:
            meta = json.loads((folder / "zarr.json").read_text())
            if meta.get("node_type") == "array":
                dirs.clear()  # chunk folders below
                yield folder, meta


def chunk_files(array: Path) -> list[str]:
    """Chunk files of an array, relative to it ('c/0/0')."""
    base = str(array).rstrip("/")
    return sorted(f"{str(folder)[len(base):].lstrip('/')}/{f}" for folder, _, files in walk(array / "c") for f in files)


def seal(path: Path) -> None:
    """Record size and CRC-32 of every chunk file of every array under ``path`` (a unit about to commit)."""
    for array, meta in arrays_under(path):
        if CRC_KEY in meta.get("attributes", {}):
            continue
        meta.setdefault("attributes", {})[CRC_KEY] = {c: list(crc32(array / c)) for c in chunk_files(array)}
        write_json(array / "zarr.json", meta)


def check_array(array: Path, meta: dict | None = None) -> list[str]:
    """What is wrong with one array's chunk files against its seal ([] if nothing; unsealed arrays pass)."""
    meta = meta or read_json(array / "zarr.json")
    sums = meta.get("attributes", {}).get(CRC_KEY)
    if sums is None:
        return []
    out = []
    for c, (size, crc) in sums.items():
        f = array / c
        if not f.is_file():
            out.append(f"{f}: chunk file missing")
        elif f.stat().st_size != size:
            out.append(f"{f}: {f.stat().st_size} bytes, sealed with {size} (truncated or overwritten)")
        elif crc32(f)[1] != crc:
            out.append(f"{f}: checksum mismatch (content changed since it was written)")
    out += [f"{array / c}: chunk file not written by mmcache" for c in chunk_files(array) if c not in sums]
    return out
