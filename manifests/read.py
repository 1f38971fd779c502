"""Read a manifest as streams: videos into a small per-video table, clips one video at a time.

Two layouts are accepted:

* HowTo100M: ``video_id,category_1,category_2,rank,task_id`` (any extra columns), one row per video; clips
  come from a caption table: the HowTo100M JSON ``{video_id: {"start": [...], "end": [...], "text": [...]}}``
  (parsed streaming, one video at a time), or one caption per row as JSONL / CSV / Parquet with
  ``video_id, start, end, text`` (each video's rows together, in any video order).
* Clip-per-row (YouCook2 / MSR-VTT style): ``video_id`` or ``path``, ``start``, ``end``, optional ``text``.
  These are evaluation sets; their rows are grouped by video in RAM.

Every column that is not structural is kept as a label. Bad rows go to a :class:`Problems` log (a file in
the store, the first few also printed), never into a list in RAM.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv"}
STRUCTURAL = {"video_id", "path", "start", "end", "text"}
CAPTION_TABLES = (".json", ".jsonl", ".csv", ".parquet")
log = logging.getLogger("mmcache")


class ManifestError(ValueError):
    """The manifest cannot be used at all (or has bad rows under --strict)."""


class Problems:
    """Bad rows, handed to ``sink`` (a callable taking one message) as they are found; only a count and
    the first ``show`` stay in RAM (and are logged)."""

    def __init__(self, sink=None, show: int = 20, where: str = ""):
        self.sink, self.show, self.where = sink, show, where
        self.count, self.first = 0, []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.first) < self.show:
            self.first.append(message)
            log.warning(message)
        if self.sink:
            self.sink(message)

    def close(self) -> None:
        if self.count > len(self.first):
            log.warning("... %d more problems%s", self.count - len(self.first),
                        f" (all of them in {self.where})" if self.where else "")


@dataclass
class Videos:
    """One row per video of the manifest, in manifest order (kept in RAM: ~1.2M rows at HowTo100M size)."""
    ids: list[str]
    paths: list[str | None]  # resolved file path; None when no file was found
    labels: dict[str, list[str]]  # video-level label columns
    index: dict[str, int]
    clip_rows: bool  # clip-per-row manifest (clips come from the manifest itself)
    clip_labels: list[str] = field(default_factory=list)  # clip-level label columns (clip-per-row manifests)
    _grouped: dict[int, list] = field(default_factory=dict, repr=False)  # clip-per-row rows, by video


@dataclass
class VideoClips:
    """The clips of one video, in the order read."""
    video: int  # index into Videos
    start: np.ndarray
    end: np.ndarray
    text: list[str]
    labels: dict[str, list[str]]  # clip-level labels (clip-per-row manifests), else {}

    def __len__(self) -> int:
        return len(self.start)


LONGEST = 86_400.0  # seconds: a caption time past a day is past any video of these datasets


def _past_any_video(start: float, end: float) -> str:
    return (f"clip time start={start:g} end={end:g} s runs past any video (over {LONGEST / 3600:g} h): kept, read "
            "up to its video's decoded end (a clip starting past that end is dropped by every trainer)")


def _float(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def index_video_root(root: str | os.PathLike) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(file stem -> path, stem -> paths where several video files share a stem) for every video file
    under ``root`` (one walk, not one glob per id). An ambiguous stem identifies no file."""
    found: dict[str, str] = {}
    ambiguous: dict[str, list[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            p = Path(dirpath, name)
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                if p.stem in found:
                    ambiguous.setdefault(p.stem, [found[p.stem]]).append(str(p))
                found.setdefault(p.stem, str(p))
    for stem in ambiguous:
        del found[stem]
    return found, ambiguous


def read_videos(manifest: str | os.PathLike, video_root: str | os.PathLike | None, problems: Problems,
                captions: str | os.PathLike | None = None, allow_outside_root: bool = False,
                find_videos: bool = True) -> Videos:
    """The video table of a manifest (one pass over the CSV). A ``path`` must name a video container under
    the video root (unless ``allow_outside_root``): `/etc/passwd` or `../x` are reported, never opened.
    Without ``find_videos`` (importing released features) no video file is looked for."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    root = Path(video_root) if video_root else manifest.parent
    if find_videos and not root.is_dir():
        raise ManifestError(f"--video-root {root} is not a folder")
    with open(manifest, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel's CSV) is not a column
        reader = csv.DictReader(f)
        try:
            return _read_video_rows(manifest, root, reader, problems, captions, allow_outside_root, find_videos)
        except UnicodeDecodeError as e:
            raise ManifestError(f"{manifest}: not UTF-8 text after line {reader.line_num} ({e.reason} at byte "
                                f"{e.start} of a read block); save it as UTF-8") from None


def _read_video_rows(manifest: Path, root: Path, reader: csv.DictReader, problems: Problems, captions,
                     allow_outside_root: bool, find_videos: bool = True) -> Videos:
    """read_videos' pass over the rows of an open CSV reader."""
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    if "video_id" not in columns and "path" not in columns:
        raise ManifestError(f"{manifest}: needs a 'video_id' or 'path' column, found {columns}")
    clip_rows = "start" in columns and "end" in columns
    if clip_rows and captions:
        raise ManifestError(f"{manifest} has start/end columns (one clip per row); --captions is for "
                            "HowTo100M-style manifests with one row per video")
    if not clip_rows and not captions:
        log.warning("%s has no start/end columns and no --captions was given: videos get features, "
                    "but there are no clips to train on", manifest)
    labels = [c for c in columns if c not in STRUCTURAL]
    stems, ambiguous = index_video_root(root) if find_videos and "path" not in columns else ({}, {})
    v = Videos([], [], {} if clip_rows else {c: [] for c in labels}, {}, clip_rows,
               labels if clip_rows else [])
    source: dict[str, tuple[str, int]] = {}  # video id -> (its path column, first line)
    for row in reader:
        line = reader.line_num
        vid = (row.get("video_id") or "").strip()
        rel = (row.get("path") or "").strip()
        if not vid and rel:
            vid = Path(rel).stem
        if not vid:
            problems.add(f"{manifest.name} line {line}: missing video_id/path")
            continue
        if clip_rows:
            start, end = _float(row.get("start")), _float(row.get("end"))
            if start is None or end is None or start < 0 or end <= start:
                problems.add(f"{manifest.name} line {line}: bad clip time start={row.get('start')!r} "
                             f"end={row.get('end')!r} (need 0 <= start < end)")
                continue
            if end > LONGEST:
                problems.add(f"{manifest.name} line {line}: {_past_any_video(start, end)}")
        if rel and source.setdefault(vid, (rel, line))[0] != rel:
            problems.add(f"{manifest.name} line {line}: {rel!r} and {source[vid][0]!r} (line {source[vid][1]}) "
                         f"are both video {vid!r}; give each file its own video_id (row ignored)")
            continue
        if vid in v.index:
            if not clip_rows:
                problems.add(f"{manifest.name} line {line}: duplicate video_id {vid!r} (row ignored)")
                continue
        else:
            path = str(root / rel) if rel else stems.get(vid)
            if not find_videos:
                path = None
            elif rel and Path(rel).suffix.lower() not in VIDEO_EXTENSIONS:
                problems.add(f"{manifest.name} line {line}: {rel!r} is not a video container we open "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))}); recorded as 'missing'")
                path = None
            elif rel and not allow_outside_root and not Path(path).resolve().is_relative_to(root.resolve()):
                problems.add(f"{manifest.name} line {line}: {rel!r} is outside --video-root {root} "
                             "(--allow-outside-root to permit it); recorded as 'missing'")
                path = None
            elif vid in ambiguous and not rel:
                problems.add(f"{manifest.name} line {line}: several files are video {vid!r}: "
                             f"{', '.join(ambiguous[vid])}; give a path column; recorded as 'missing'")
            elif path is None or not Path(path).is_file():
                problems.add(f"{manifest.name} line {line}: no video file for {vid!r}"
                             f" (looked for {path or str(root / (vid + '.*'))}); recorded as 'missing'")
                path = None
            v.index[vid] = len(v.ids)
            v.ids.append(vid)
            v.paths.append(path)
            if not clip_rows:
                for c in labels:
                    v.labels[c].append((row.get(c) or "").strip())
        if clip_rows:
            v._grouped.setdefault(v.index[vid], []).append(
                (start, end, (row.get("text") or "").strip(), [(row.get(c) or "").strip() for c in labels]))
    if not v.ids:
        raise ManifestError(f"{manifest}: no usable rows" + "".join("\n  " + p for p in problems.first))
    return v


def iter_clips(videos: Videos, captions: str | os.PathLike | None, problems: Problems) -> Iterator[VideoClips]:
    """Each manifest video's clips, one video at a time, in the order the caption source lists them."""
    if videos.clip_rows:
        for i, rows in videos._grouped.items():
            labels = {c: [r[3][k] for r in rows] for k, c in enumerate(videos.clip_labels)}
            yield VideoClips(i, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                             [r[2] for r in rows], labels)
        videos._grouped.clear()
        return
    if not captions:
        return
    path = Path(captions)
    if not path.is_file():
        raise ManifestError(f"captions file not found: {path}")
    kind = path.suffix.lower()
    if kind not in CAPTION_TABLES:
        raise ManifestError(f"{path}: captions must be {', '.join(CAPTION_TABLES)} (got {kind!r})")
    source = _json_videos(path) if kind == ".json" else _grouped(_table_rows(path, kind), path)
    seen = np.zeros(len(videos.ids), bool)
    unknown = 0
    for vid, where, loc, starts, ends, texts in source:
        i = videos.index.get(vid)
        if i is None:
            unknown += 1
            continue
        if seen[i]:
            problems.add(f"{where}: captions for {vid!r} again after other videos' captions (a caption table "
                         "must list each video's rows together; sort it by video_id); these are skipped")
            continue
        seen[i] = True
        if not all(isinstance(x, list) for x in (starts, ends, texts)):
            problems.add(f"{where}: expected {{start: [...], end: [...], text: [...]}} lists; video skipped for clips")
            continue
        if not (len(starts) == len(ends) == len(texts)):
            problems.add(f"{where}: start/end/text lengths differ ({len(starts)}/{len(ends)}/{len(texts)}); "
                         "video skipped for clips")
            continue
        s = np.array([_float(x) for x in starts], dtype=float)  # None -> nan
        e = np.array([_float(x) for x in ends], dtype=float)
        good = (s >= 0) & (e > s)  # nan compares False
        for j in np.flatnonzero(~good):
            problems.add(f"{loc(j)}: bad caption time ({starts[j]!r}, {ends[j]!r}); caption skipped")
        for j in np.flatnonzero(good & (e > LONGEST)):
            problems.add(f"{loc(j)}: {_past_any_video(s[j], e[j])}")
        if good.any():
            yield VideoClips(i, s[good], e[good],
                             [str(t if t is not None else "").strip() for t, g in zip(texts, good) if g], {})
    for i in np.flatnonzero(~seen):
        problems.add(f"{path.name}: no captions for video {videos.ids[i]!r}; it gets features but no clips")
    if unknown:
        problems.add(f"{path.name}: {unknown} captioned videos are not in the manifest (ignored)")


def _json_videos(path: Path):
    """HowTo100M captions JSON, streamed with ijson: one (video_id, where, starts, ends, texts) at a time."""
    import ijson

    with open(path, "rb") as f:
        head = f.read(64).lstrip()
        if not head.startswith(b"{"):
            raise ManifestError(f"{path}: expected a JSON object {{video_id: {{start, end, text}}}}")
        f.seek(0)
        try:
            for vid, cap in ijson.kvitems(f, "", use_float=True):
                where = f"{path.name}[{vid!r}]"
                loc = (lambda w: lambda j: f"{w}[{j}]")(where)
                if not isinstance(cap, dict):
                    yield vid, where, loc, None, None, None  # reported: not the expected lists
                    continue
                yield vid, where, loc, cap.get("start", []), cap.get("end", []), cap.get("text", [])
        except ijson.JSONError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from e


def _table_rows(path: Path, kind: str):
    """(where, video_id, start, end, text) per caption row of a JSONL / CSV / Parquet caption table."""
    need = ("video_id", "start", "end")
    if kind == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ManifestError(f"{path} line {n}: not valid JSON ({e})") from e
                if not isinstance(row, dict) or any(k not in row for k in need):
                    raise ManifestError(f"{path} line {n}: each line must be an object with {need} (+ text)")
                yield f"{path.name} line {n}", str(row["video_id"]), row["start"], row["end"], row.get("text", "")
    elif kind == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
            if any(k not in reader.fieldnames for k in need):
                raise ManifestError(f"{path}: a caption table needs columns {need} (+ text), has {reader.fieldnames}")
            for row in reader:
                yield (f"{path.name} line {reader.line_num}", row["video_id"].strip(), row["start"], row["end"],
                       row.get("text") or "")
    else:
        from features.optional import require

        pq = require("pyarrow.parquet", "a .parquet manifest")

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if any(k not in names for k in need):
            raise ManifestError(f"{path}: a caption table needs columns {need} (+ text), has {names}")
        n = 0
        for batch in pf.iter_batches(columns=[*need, *(["text"] if "text" in names else [])], batch_size=65536):
            cols = batch.to_pydict()
            texts = cols.get("text") or [""] * batch.num_rows
            for vid, s, e, t in zip(cols["video_id"], cols["start"], cols["end"], texts):
                yield f"{path.name} row {n}", str(vid), s, e, t
                n += 1


def _grouped(rows, path: Path):
    """Consecutive rows of one video -> (video_id, where, loc, starts, ends, texts)."""
    current, wheres, starts, ends, texts = None, [], [], [], []
    for w, vid, s, e, t in rows:
        if vid != current:
            if current is not None:
                yield current, wheres[0], wheres.__getitem__, starts, ends, texts
            current, wheres, starts, ends, texts = vid, [], [], [], []
        wheres.append(w)
        starts.append(s)
        ends.append(e)
        texts.append(t)
    if current is not None:
        yield current, wheres[0], wheres.__getitem__, starts, ends, texts


@dataclass
class Manifest:
    """A whole manifest in RAM: for small sets, tests and tools; planning streams instead."""
    videos: Videos
    clips: list[VideoClips]
    problems: list[str]


def read_manifest(manifest, captions=None, video_root=None, strict: bool = False,
                  allow_outside_root: bool = False) -> Manifest:
    problems = Problems(show=10**9)
    videos = read_videos(manifest, video_root, problems, captions, allow_outside_root)
    clips = list(iter_clips(videos, captions, problems))
    if strict and problems.count:
        raise ManifestError("manifest problems (--strict):\n  " + "\n  ".join(problems.first))
    return Manifest(videos, clips, problems.first)
