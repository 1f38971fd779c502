"""Checksums of committed data, and `pipeline verify`.

Every array mmcache writes is *sealed* when its unit commits: the array's own ``zarr.json`` gets the
attribute ``mmcache_crc32`` = {chunk file: [bytes, CRC-32]} for every chunk file it has (the store stays
plain Zarr). Readers use the list to tell a deleted chunk (an error) from one Zarr never wrote (all fill
value) and refuse a chunk of the wrong size; :func:`verify` re-reads every chunk file, and checks each
unit's shapes and offsets against the plan.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return size, crc


def arrays_under(path: Path):
    """Every Zarr array folder at or under ``path`` (folders holding a zarr.json with node_type array)."""
    for folder, dirs, files in os.walk(path):
        if "zarr.json" in files:
            meta = json.loads(Path(folder, "zarr.json").read_text())
            if meta.get("node_type") == "array":
                dirs.clear()  # chunk folders below
                yield Path(folder), meta


def chunk_files(array: Path) -> list[str]:
    """Chunk files of an array, relative to it ('c/0/0')."""
    return sorted(str(Path(folder, f).relative_to(array)) for folder, _, files in os.walk(array / "c")
                  for f in files)


def seal(path: Path) -> None:
    """Record size and CRC-32 of every chunk file of every array under ``path`` (a unit about to commit)."""
    from .store import write_json

    for array, meta in arrays_under(path):
        if CRC_KEY in meta.get("attributes", {}):
            continue
        meta.setdefault("attributes", {})[CRC_KEY] = {c: list(crc32(array / c)) for c in chunk_files(array)}
        write_json(array / "zarr.json", meta)


def check_array(array: Path, meta: dict | None = None) -> list[str]:
    """What is wrong with one array's chunk files against its seal ([] if nothing; unsealed arrays pass)."""
    from .store import read_json

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


@dataclass
class Report:
    checked_units: int = 0
    checked_bytes: int = 0
    unsealed_arrays: int = 0
    damaged: dict[str, list[str]] = field(default_factory=dict)  # unit path -> problems
    repaired: list[str] = field(default_factory=list)


def _units(store) -> list[tuple[str, Path]]:
    """(kind, path) of every unit of the store: the plan, each (part, group), word2vec, status indexes, text
    groups."""
    p = store.path
    out = [("plan", p / "videos"), ("plan", p / "clips"), ("plan", p / "problems")]
    parts = p / "parts"
    for d in sorted(parts.iterdir()) if parts.is_dir() else []:
        if d.is_dir() and d.name.startswith("p") and d.name[1:].isdigit():
            out += [("part", u) for u in sorted(d.iterdir()) if u.is_dir() and not u.name.startswith(".")]
    if (p / "word2vec").is_dir():
        out.append(("word2vec", p / "word2vec"))
    for kind in ("status", "text"):
        for d in sorted((p / kind).iterdir()) if (p / kind).is_dir() else []:
            if d.is_dir() and not d.name.startswith("."):
                out.append((kind, d))
    return out


def _shapes(store, kind: str, unit: Path) -> list[str]:
    """The unit's arrays have the lengths the plan says, and its offsets can index its data."""
    from .store import RowReader

    def n(name):
        return RowReader(unit / name).shape[0]

    def offsets_ok(name, data_rows, want):
        off = RowReader(unit / name)
        why = offsets_problem(off.rows(0, len(off)), data_rows, want)
        return [f"{unit / name}: {why}"] if why else []

    if kind == "plan" and unit.name == "videos":
        return offsets_ok("clip_offsets", store.n_clips, store.n_videos + 1) + [
            f"{unit / a}: {n(a)} rows, the plan has {store.n_videos} videos"
            for a in ("video_id", "path", "part") if n(a) != store.n_videos]
    if kind == "plan" and unit.name == "clips":
        return [f"{unit / a}: {n(a)} rows, the plan has {store.n_clips} clips"
                for a in ("video", "start", "end", "text") if n(a) != store.n_clips]
    if kind == "part":
        p, group = int(unit.parent.name[1:]), unit.name
        a, b = store.part_range(p)
        out = offsets_ok("offsets", n("data"), b - a + 1)
        out += [f"{unit / x}: {n(x)} rows, part {p} has {b - a} videos"
                for x in ("status", "error", "duration") if n(x) != b - a]
        if (unit / "bytes").is_dir():  # encoded files: each row a [start, end) inside bytes, in order
            r = RowReader(unit / "data").rows(0, n("data"))
            if len(r) and (r[0, 0] != 0 or (r[:, 1] < r[:, 0]).any() or (r[1:, 0] != r[:-1, 1]).any()
                           or r[-1, 1] != n("bytes")):
                out.append(f"{unit / 'data'}: byte ranges do not tile {unit / 'bytes'} ({n('bytes')} bytes)")
        dim = store.groups.get(group, {}).get("dim")
        width = RowReader(unit / "data").shape[1:]
        if dim is not None and width != (int(dim),):
            out.append(f"{unit / 'data'}: rows of width {width}, group {group!r} is {dim}-d")
        return out
    if kind == "word2vec":
        return offsets_ok("offsets", n("ids"), store.n_clips + 1) + (
            [f"{unit / 'status'}: {n('status')} rows for {store.n_clips} clips"] if n("status") != store.n_clips else [])
    if kind == "text":
        return offsets_ok("offsets", n("ids"), store.n_clips + 1) + [
            f"{unit / x}: {n(x)} rows for {store.n_clips} clips" for x in ("status", "embedding") if n(x) != store.n_clips]
    if kind == "status":
        return [f"{unit / x}: {n(x)} rows for {store.n_videos} videos"
                for x in ("status", "ok", "duration") if n(x) != store.n_videos]
    return []


def verify(store, progress: bool = False) -> Report:
    """Check every chunk file of every unit against its seal, and every unit's shapes against the plan."""
    from tqdm import tqdm

    from .store import StoreError, read_json

    report = Report()
    for kind, unit in tqdm(_units(store), disable=not progress, desc="verify", unit="unit"):
        problems = []
        try:
            arrays = list(arrays_under(unit))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{unit}: a zarr.json is damaged ({e})")
            arrays = []
        if not arrays:
            problems = problems or [f"{unit}: no arrays (an incomplete commit)"]
        for array, meta in arrays:
            report.unsealed_arrays += CRC_KEY not in meta.get("attributes", {})
            report.checked_bytes += sum(s for s, _ in meta.get("attributes", {}).get(CRC_KEY, {}).values())
            problems += check_array(array, meta)
        if not problems:
            try:
                problems += _shapes(store, kind, unit)
            except (StoreError, KeyError, FileNotFoundError, ValueError) as e:
                problems.append(f"{unit}: {e}")
        report.checked_units += 1
        if problems:
            report.damaged[str(unit)] = problems
    return report


def repair(store, report: Report) -> list[str]:
    """Remove the damaged units `pipeline extract` can recompute (parts, word2vec, status, text) so the next
    run with the same flags rebuilds them; returns what the plan needs (it cannot be recomputed in place)."""
    unrepairable = []
    for unit in map(Path, report.damaged):
        if unit.parent == store.path and unit.name in ("videos", "clips", "problems"):
            unrepairable.append(str(unit))
            continue
        trash = unit.parent / f".tmp-damaged-{unit.name}-{uuid.uuid4().hex[:8]}"
        os.rename(unit, trash)  # atomic: readers see the unit whole or missing, never half-deleted
        shutil.rmtree(trash, ignore_errors=True)
        report.repaired.append(str(unit))
    return unrepairable
