"""`pipeline import` / `pipeline export`: pre-extracted features in and out of a store group, a video at a time.

Import reads HowTo100M's released layout -- one ``<video_id>.npy`` per video, a (T, D) array -- or one HDF5
file with a dataset per video id (the layout video_features writes), into a group of a store planned from the
manifest without a single video file. ``np.load(allow_pickle=False)`` always. A video without features gets
status ``missing`` (saying where it was looked for), a malformed array ``bad_features``; parts commit
atomically, so a killed import resumes. Export writes any group back out in either layout.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.optional import require

from .plan import plan_checksum, plan_store
from .store import TMP_PREFIX, FeatureStore, StoreLock, add_groups, write_part, write_status_index

log = logging.getLogger("mmcache")


class BadFeatures(ValueError):
    pass


class Source:
    """Per-video arrays from a folder of ``<video_id>.npy`` files or an HDF5 file (dataset per video id)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            self.kind, self.h5 = "npy", None
        elif self.path.is_file() and self.path.suffix.lower() in (".h5", ".hdf5"):
            h5py = require("h5py", "reading HDF5 features")

            self.kind, self.h5 = "h5", h5py.File(self.path, "r")
        else:
            raise FileNotFoundError(f"--features {self.path}: need a folder of <video_id>.npy files or an .h5 file")

    def where(self, vid: str) -> str:
        return str(self.path / f"{vid}.npy") if self.kind == "npy" else f"{self.path}[{vid!r}]"

    def get(self, vid: str) -> np.ndarray | None:
        """The video's (T, D) array; None if the source has none; BadFeatures if it is not a numeric 2-D array."""
        try:
            if self.kind == "npy":
                f = self.path / f"{vid}.npy"
                if not f.is_file():
                    return None
                x = np.load(f, allow_pickle=False)
            else:
                if vid not in self.h5:
                    return None
                x = self.h5[vid][...]
        except (ValueError, OSError) as e:  # object arrays (pickles), damaged files
            raise BadFeatures(f"{self.where(vid)}: cannot read ({e})") from None
        if x.ndim != 2 or x.dtype.kind not in "fiu":
            raise BadFeatures(f"{self.where(vid)}: a {x.dtype} array of shape {x.shape}, need (T, D) numbers")
        if not np.isfinite(x).all():
            raise BadFeatures(f"{self.where(vid)}: holds nan/inf")
        return x

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()


@dataclass
class ImportConfig:
    manifest: str
    store: str
    features: str  # folder of <video_id>.npy or an .h5 file
    group: str  # e.g. resnet152, r3d_18, or a name of your own
    captions: str | None = None
    rate: float = 1.0  # rows per second (HowTo100M's 2D features: 1.0; 3D: 1.5)
    part_size: int | None = None
    strict: bool = False
    progress: bool = True


def import_features(cfg: ImportConfig) -> dict:
    from tqdm import tqdm

    src = Source(cfg.features)
    lock = StoreLock(cfg.store)
    try:
        lock.run()
        store = _open_or_plan(cfg)
        dim = _first_dim(src, store)
        meta = dict(extractor=f"imported from {src.path} ({src.kind})", weights=str(src.path), weights_sha256=None,
                    random_init=False, dim=dim, rate=cfg.rate, params=dict(format=src.kind, rate=cfg.rate, dtype="float16"))
        with lock.attrs():
            known = FeatureStore(store.path).groups.get(cfg.group)
            if known and any(known.get(k) != meta[k] for k in ("extractor", "params", "dim")):
                raise ValueError(f"group {cfg.group!r} in {store.path} came from elsewhere ({known.get('extractor')}, "
                                 f"{known.get('params')}); import into a new --store or another --group")
            add_groups(store.path, {cfg.group: meta})
        done = store.committed(cfg.group)
        todo = [p for p in range(store.n_parts) if p not in done]
        counts: Counter = Counter()
        for p in tqdm(todo, disable=not cfg.progress, desc=f"import {cfg.group}", unit="part"):
            a, b = store.part_range(p)
            rows, status, error, duration = [], [], [], []
            for vid in store.videos["video_id"][a:b]:
                try:
                    x = src.get(str(vid))
                    if x is not None and x.shape[1] != dim:
                        raise BadFeatures(f"{src.where(vid)}: {x.shape[1]}-d, the group is {dim}-d")
                    st, err = ("ok", "") if x is not None else ("missing", f"no features at {src.where(vid)}")
                except BadFeatures as e:
                    x, st, err = None, "bad_features", str(e)
                rows.append(x)
                status.append(st)
                error.append(err)
                duration.append(len(x) / cfg.rate if x is not None else 0.0)
                counts[st] += 1
            write_part(store.path, p, cfg.group, rows, status, error, duration, dim,
                       {"videos": [str(v) for v in store.videos["video_id"][a:b]]})
        with lock.attrs():
            write_status_index(store, cfg.group)
        return {"store": str(store.path), "group": cfg.group, "videos": store.n_videos, "parts_run": len(todo),
                "status": dict(Counter(store.video_status(cfg.group)[0]))}
    finally:
        src.close()
        lock.close()


def _open_or_plan(cfg: ImportConfig) -> FeatureStore:
    path = Path(cfg.store)
    if not (path / "zarr.json").is_file():
        plan_store(path, cfg.manifest, cfg.captions, strict=cfg.strict, part_size=cfg.part_size, find_videos=False)
    store = FeatureStore(path)
    if store.meta["plan_sha256"] != plan_checksum(cfg.manifest, cfg.captions):
        raise ValueError(f"{path} was planned from a different manifest/captions ({store.meta['manifest']})")
    return store


def _first_dim(src: Source, store: FeatureStore) -> int:
    """The feature width, from the first video the source has (a store's videos, in order)."""
    for vid in store.videos["video_id"]:
        try:
            x = src.get(str(vid))
        except BadFeatures:
            continue
        if x is not None:
            return int(x.shape[1])
    raise ValueError(f"{src.path} has features for none of the {store.n_videos} videos in {store.meta['manifest']} "
                     f"(looked for e.g. {src.where(str(store.videos['video_id'][0]))})")


def export_clips(store: str, out: str, progress: bool = True) -> dict:
    """The clip table as Parquet (pandas, DuckDB, Hugging Face ``datasets`` open it): per clip its key, video_id,
    start, end, text and label columns, written a chunk of the table at a time, then renamed into place."""
    from tqdm import tqdm

    from .store import CLIP_CHUNK

    pa = require("pyarrow", "--format parquet")
    pq = require("pyarrow.parquet", "--format parquet")
    s = FeatureStore(store)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{TMP_PREFIX}{out_path.name}-{uuid.uuid4().hex[:8]}")
    writer = None
    try:
        for a in tqdm(range(0, s.n_clips, CLIP_CHUNK), disable=not progress, desc="export clips", unit="chunk"):
            idx = np.arange(a, min(s.n_clips, a + CLIP_CHUNK))
            columns = {"key": s.clip_keys(idx).astype(str), "video_id": s.videos["video_id"][s.clip_video(idx)],
                       "start": s.clip_rows("start", idx[0], idx[-1] + 1),
                       "end": s.clip_rows("end", idx[0], idx[-1] + 1), "text": s.clip_values("text", idx),
                       **{f"label_{k}": v for k, v in s.labels(idx).items()}}
            table = pa.table({k: pa.array(np.asarray(v).tolist()) for k, v in columns.items()})
            table = table.replace_schema_metadata({"mmcache_plan_sha256": str(s.meta.get("plan_sha256"))})
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"clips": s.n_clips, "out": str(out_path)}


def export_features(store: str, group: str, fmt: str, out: str, dtype: str = "float32",
                    progress: bool = True) -> dict:
    """Write every usable video's rows of ``group``: ``<out>/<video_id>.npy`` or one HDF5 file ``out`` with a
    dataset per video id (attributes: the group's provenance). Written to a temporary name, then renamed."""
    from tqdm import tqdm

    s = FeatureStore(store)
    if group not in s.groups or s.rate(group) is None:
        raise KeyError(f"{s.path} has no per-video group {group!r} (have {sorted(s.groups)})")
    if codec := s.groups[group].get("params", {}).get("codec"):
        raise KeyError(f"{group!r} holds {codec} files of the frames, not features: read them with "
                       "FeatureStore.video_files, or train on them with `trainers mcn --end-to-end-video`")
    ok = s.video_ok(group)
    ids = s.videos["video_id"]
    out_path = Path(out)
    if fmt == "npy":
        out_path.mkdir(parents=True, exist_ok=True)
        for v in tqdm(np.flatnonzero(ok).tolist(), disable=not progress, desc=f"export {group}", unit="video"):
            tmp = out_path / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}.npy"
            np.save(tmp, s.video_rows(group, v)().astype(dtype), allow_pickle=False)
            os.replace(tmp, out_path / f"{ids[v]}.npy")
    elif fmt == "h5":
        h5py = require("h5py", "--format h5")

        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f"{TMP_PREFIX}{out_path.name}-{uuid.uuid4().hex[:8]}")
        with h5py.File(tmp, "w") as f:
            f.attrs["mmcache_group"] = json.dumps({group: s.groups[group]})
            for v in tqdm(np.flatnonzero(ok).tolist(), disable=not progress, desc=f"export {group}", unit="video"):
                f.create_dataset(str(ids[v]), data=s.video_rows(group, v)().astype(dtype))
        os.replace(tmp, out_path)
    else:
        raise ValueError(f"--format {fmt!r}: choose npy or h5")
    return {"group": group, "format": fmt, "out": str(out_path), "videos": int(ok.sum()),
            "skipped (not ok)": int((~ok).sum())}
