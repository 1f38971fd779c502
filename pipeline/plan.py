"""Plan a store from a manifest in memory that does not grow with the captions: the video table in RAM,
the clip table streamed to chunked columns, bad rows to the ``problems`` array; committed by one rename.

Store video order: videos in the order their captions arrive, then the manifest's videos without captions.
This lets one pass over a 136M-caption file write every video's clips as one contiguous run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from manifests.read import ManifestError, Problems, iter_clips, read_videos

from .store import FORMAT_VERSION, TMP_PREFIX, ColumnWriter, ensure_group, scratch, write_unit
from .store.seal import seal

MAX_PART = 64  # videos per part by default: ~100 MB of ResNet-152 rows for 64 HowTo100M videos


def plan_checksum(*paths) -> str:
    """SHA-256 over the planning inputs, read in blocks (the captions file can be several GB)."""
    h = hashlib.sha256()
    for p in paths:
        if p:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def relative_to_root(path: str | None, root: Path) -> str:
    """A video's path as the store records it: relative to the video root (so the store and the videos may
    move: a later run resolves it under its own --video-root), or absolute where it lies outside the root."""
    if not path:
        return ""
    full = Path(os.path.abspath(path))  # not resolved: a symlinked video stays under its root
    return os.path.relpath(full, root) if full.is_relative_to(root) else str(full)


def video_paths(store, video_root: str | None = None) -> list[str]:
    """Every video's file as this run finds it: each recorded path under ``video_root`` (this run's
    --video-root) or else the root the store recorded; where a file is not there and a --video-root was given,
    the file of that video id under it (a moved folder with another layout). Stores planned before the root
    was recorded hold paths relative to the folder they were planned from (or absolute). '' where none."""
    from manifests.read import index_video_root

    recorded = store.meta.get("video_root")
    base = Path(video_root) if video_root else Path(recorded) if recorded else Path.cwd()
    out = [str(base / p) if p and not os.path.isabs(p) else str(p) for p in store.videos["path"]]
    if video_root:
        found = None
        for i, p in enumerate(out):
            if not p or not os.path.isfile(p):
                found = found if found is not None else index_video_root(video_root)[0]
                out[i] = found.get(str(store.videos["video_id"][i]), "")
    return out


def plan_store(store: str | os.PathLike, manifest: str, captions: str | None = None,
               video_root: str | None = None, strict: bool = False, part_size: int | None = None,
               workers: int = 1, allow_outside_root: bool = False, find_videos: bool = True) -> dict:
    """Write videos/, clips/, parts/ and the root attributes into a temp dir, then rename it to ``store``.
    Returns {videos, clips, problems, problems_at, plan_sha256}."""
    final = Path(store)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with scratch(tmp, final):  # any failure (a bad manifest, --strict, a full disk) leaves no temp store behind
        root = zarr.open_group(str(tmp), mode="w")
        problem_rows = ColumnWriter(root, {"problems": str}, chunk=4096, dim="problem")
        problems = Problems(lambda m: problem_rows.append({"problems": [m]}), where=f"{final}/problems")
        try:
            videos = read_videos(manifest, video_root, problems, captions, allow_outside_root, find_videos)
            columns = {"video": "int32", "start": "float64", "end": "float64", "text": str,
                       **{f"label_{c}": str for c in videos.clip_labels}}
            clips = ColumnWriter(root.create_group("clips"), columns)
            order, counts = [], []
            for vc in iter_clips(videos, captions, problems):
                clips.append({"video": np.full(len(vc), len(order), np.int32), "start": vc.start, "end": vc.end,
                              "text": vc.text, **{f"label_{c}": vc.labels[c] for c in videos.clip_labels}})
                order.append(vc.video)
                counts.append(len(vc))
            n_clips = clips.close()
            problem_rows.close()
        finally:
            problems.close()
        if strict and problems.count:
            raise ManifestError(f"{problems.count} manifest problems (--strict):\n  " + "\n  ".join(problems.first))
        seen = np.zeros(len(videos.ids), bool)
        seen[order] = True
        rest = np.flatnonzero(~seen)
        order = np.concatenate([np.asarray(order, np.int64), rest])
        counts = np.concatenate([np.asarray(counts, np.int64), np.zeros(len(rest), np.int64)])
        n = len(order)
        part_size = part_size or max(1, min(MAX_PART, -(-n // (4 * max(1, workers)))))
        video_root = Path(os.path.abspath(video_root or Path(manifest).parent))
        write_unit(tmp / "videos", {
            "video_id": np.array([videos.ids[i] for i in order], dtype=object),
            "path": np.array([relative_to_root(videos.paths[i], video_root) for i in order], dtype=object),
            "part": np.arange(n, dtype=np.int32) // part_size,
            "clip_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            **{f"label_{k}": np.array([col[i] for i in order], dtype=object) for k, col in videos.labels.items()}},
            {})
        ensure_group(tmp / "parts")
        checksum = plan_checksum(manifest, captions)
        root.attrs.update({"mmcache": dict(version=FORMAT_VERSION, plan_sha256=checksum,
                                           manifest=str(manifest), captions=captions, part_size=part_size,
                                           video_root=str(video_root),
                                           n_videos=n, n_clips=n_clips, manifest_problems=problems.count),
                           "groups": {}})
        seal(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "zarr.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run planned the same store first: use its plan
    return {"videos": n, "clips": n_clips, "problems": problems.count, "problems_at": f"{final}/problems",
            "plan_sha256": checksum}
