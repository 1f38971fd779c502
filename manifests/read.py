"""Read a manifest into videos and clips, reporting bad rows by line number.

Two layouts are accepted:

* HowTo100M: ``video_id,category_1,category_2,rank,task_id`` (any extra columns), one row per video;
  clips come from a captions JSON ``{video_id: {"start": [...], "end": [...], "text": [...]}}``.
* Clip-per-row (YouCook2 / MSR-VTT style): ``video_id`` or ``path``, ``start``, ``end``, optional ``text``.

Every column that is not structural is kept as a label for evaluation.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv"}
STRUCTURAL = {"video_id", "path", "start", "end", "text"}


class ManifestError(ValueError):
    """The manifest cannot be used at all (or has bad rows under --strict)."""


@dataclass
class Video:
    video_id: str
    path: str | None  # resolved file path; None when no file was found
    labels: dict[str, str]
    line: int


@dataclass
class Clip:
    video_id: str
    start: float
    end: float
    text: str
    labels: dict[str, str]
    where: str  # "line 12" or "captions[vid][3]" for messages


@dataclass
class Manifest:
    videos: list[Video]
    clips: list[Clip]
    problems: list[str] = field(default_factory=list)
    label_columns: list[str] = field(default_factory=list)


def _float(value: str | float | None) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def index_video_root(root: str | os.PathLike) -> dict[str, str]:
    """Map file stem -> path for every video file under ``root`` (one walk, not one glob per id)."""
    found: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            p = Path(dirpath, name)
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                found.setdefault(p.stem, str(p))
    return found


def read_manifest(manifest: str | os.PathLike, captions: str | os.PathLike | None = None,
                  video_root: str | os.PathLike | None = None, strict: bool = False) -> Manifest:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    root = Path(video_root) if video_root else manifest.parent
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        rows = [(reader.line_num, row) for row in reader]
    if "video_id" not in columns and "path" not in columns:
        raise ManifestError(f"{manifest}: needs a 'video_id' or 'path' column, found {columns}")
    clip_rows = "start" in columns and "end" in columns
    if clip_rows and captions:
        raise ManifestError(f"{manifest} has start/end columns (one clip per row); --captions is for "
                            "HowTo100M-style manifests with one row per video")
    labels = [c for c in columns if c not in STRUCTURAL]
    stems = index_video_root(root) if "path" not in columns else {}
    problems: list[str] = []
    videos: dict[str, Video] = {}
    clips: list[Clip] = []

    for line, row in rows:
        vid = (row.get("video_id") or "").strip()
        rel = (row.get("path") or "").strip()
        if not vid and rel:
            vid = Path(rel).stem
        if not vid:
            problems.append(f"{manifest.name} line {line}: missing video_id/path")
            continue
        row_labels = {c: (row.get(c) or "").strip() for c in labels}
        if clip_rows:
            start, end = _float(row.get("start")), _float(row.get("end"))
            if start is None or end is None or start < 0 or end <= start:
                problems.append(f"{manifest.name} line {line}: bad clip time start={row.get('start')!r} "
                                f"end={row.get('end')!r} (need 0 <= start < end)")
                continue
            clips.append(Clip(vid, start, end, (row.get("text") or "").strip(), row_labels, f"line {line}"))
        if vid in videos:
            if not clip_rows:
                problems.append(f"{manifest.name} line {line}: duplicate video_id {vid!r} "
                                f"(first on line {videos[vid].line})")
            continue
        path = str(root / rel) if rel else stems.get(vid)
        if path is None or not Path(path).is_file():
            problems.append(f"{manifest.name} line {line}: no video file for {vid!r}"
                            f" (looked for {path or str(root / (vid + '.*'))}); recorded as 'missing'")
            path = None
        videos[vid] = Video(vid, path, {} if clip_rows else row_labels, line)

    if captions:
        clips = _read_captions(Path(captions), videos, problems)
    if strict and problems:
        raise ManifestError("manifest problems (--strict):\n  " + "\n  ".join(problems))
    if not videos:
        raise ManifestError(f"{manifest}: no usable rows" + ("".join("\n  " + p for p in problems[:20])))
    return Manifest(list(videos.values()), clips, problems, labels)


def _read_captions(path: Path, videos: dict[str, Video], problems: list[str]) -> list[Clip]:
    if not path.is_file():
        raise ManifestError(f"captions file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected an object {{video_id: {{start, end, text}}}}")
    clips: list[Clip] = []
    for vid, video in videos.items():
        cap = data.get(vid)
        if cap is None:
            problems.append(f"{path.name}: no captions for video {vid!r}; it gets features but no clips")
            continue
        starts, ends, texts = cap.get("start", []), cap.get("end", []), cap.get("text", [])
        if not (len(starts) == len(ends) == len(texts)):
            problems.append(f"{path.name}[{vid!r}]: start/end/text lengths differ "
                            f"({len(starts)}/{len(ends)}/{len(texts)}); video skipped for clips")
            continue
        for i, (s, e, t) in enumerate(zip(starts, ends, texts)):
            s, e = _float(s), _float(e)
            if s is None or e is None or s < 0 or e <= s:
                problems.append(f"{path.name}[{vid!r}][{i}]: bad caption time ({starts[i]!r}, {ends[i]!r})")
                continue
            clips.append(Clip(vid, s, e, str(t if t is not None else "").strip(), video.labels,
                              f"captions[{vid}][{i}]"))
    unknown = len(set(data) - set(videos))
    if unknown:
        problems.append(f"{path.name}: {unknown} captioned videos are not in the manifest (ignored)")
    return clips
