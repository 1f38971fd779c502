"""`pipeline verify`: every chunk file of every unit re-read against its seal, each unit's shapes and offsets
checked against the plan; ``repair`` removes damaged units for `pipeline extract` to recompute."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path


from .layout import StoreError
from .rows import RowReader
from .seal import CRC_KEY, arrays_under, check_array, offsets_problem

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
