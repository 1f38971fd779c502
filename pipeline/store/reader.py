"""The read API: ``FeatureStore`` opens a store from its root metadata and loads everything else on first
use (per-video columns, units, clip rows, text). It never writes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from .location import is_local, locate, zarr_location
from .layout import CLIP_CHUNK, FORMAT_VERSION, PART, USABLE, StoreError, attributes_of, damaged, read_json
from .rows import RowReader
from .seal import offsets_problem
from .units import read_unit

@dataclass
class Group:
    """A whole feature group in RAM: video i has rows data[offsets[i]:offsets[i+1]]."""
    name: str
    data: np.ndarray
    offsets: np.ndarray
    status: np.ndarray
    error: np.ndarray
    rate: float | None = None

    def video(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class Unit:
    """One committed (part, group) unit, opened for reading."""
    data: RowReader
    offsets: np.ndarray
    bytes: RowReader | None = None  # a group of encoded files (frames): data rows are [start, end) in it


class FeatureStore:
    """Read side of the store. Opening reads the root metadata only; everything else loads on first use."""

    MAX_UNITS = 16  # open units kept (their mapped pages count as RSS until the unit is dropped)

    def __init__(self, path: str | os.PathLike):
        self.path = locate(path)  # a local folder, or an fsspec URL (pipeline/store/location.py)
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"no feature store at {self.path} (run `pipeline extract` first)")
        self.attrs = read_json(self.path / "zarr.json").get("attributes", {})
        if "mmcache" not in self.attrs:
            raise StoreError(f"{self.path} is a Zarr group but not an mmcache feature store")
        self.meta = self.attrs["mmcache"]
        version = self.meta.get("version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{self.path} uses store layout v{version}; this mmcache reads v{FORMAT_VERSION}. "
                             f"Rebuild it into a new store: pipeline extract --manifest {self.meta.get('manifest')}"
                             + (f" --captions {self.meta['captions']}" if self.meta.get("captions") else "")
                             + " --store NEW.zarr (with the same extractor flags)")
        self.n_videos, self.n_clips = int(self.meta["n_videos"]), int(self.meta["n_clips"])
        self.part_size = int(self.meta["part_size"])
        self._units: dict[tuple[int, str], Unit] = {}
        self._index: dict[str, zarr.Group | None] = {}  # per-video status, read once (see _video_column)
        self._scans: dict[str, dict[str, np.ndarray]] = {}
        self._video_cache: dict[tuple[str, str], np.ndarray] = {}

    # ---- layout --------------------------------------------------------------------------
    @property
    def groups(self) -> dict[str, dict]:
        return dict(self.attrs.get("groups", {}))

    def rate(self, group: str) -> float | None:
        """Rows per second of a time-indexed group (None: not time-indexed)."""
        record = self.groups.get(group, {})
        if "rate" not in record:
            raise StoreError(f"{self.path}: group {group!r} records no rate (rows per second, or null for one row "
                             "per clip), as every extractor's record does: extract it again into a new store")
        return None if record["rate"] is None else float(record["rate"])

    @property
    def n_parts(self) -> int:
        return (self.n_videos + self.part_size - 1) // self.part_size

    def part_range(self, p: int) -> tuple[int, int]:
        return p * self.part_size, min(self.n_videos, (p + 1) * self.part_size)

    def unit_path(self, p: int, group: str) -> Path:
        return self.path / "parts" / PART.format(p) / group

    def committed(self, group: str) -> set[int]:
        parts = self.path / "parts"
        if not parts.is_dir():
            return set()
        names = os.listdir(parts) if is_local(parts) else [d.name for d in parts.iterdir()]
        return {int(d[1:]) for d in names if d.startswith("p") and (parts / d / group).is_dir()}

    def problems(self, limit: int | None = None) -> list[str]:
        """The first ``limit`` manifest/caption problems found while planning."""
        arr = zarr.open_array(zarr_location(self.path / "problems"), mode="r")
        return arr[:limit].astype(object).tolist() if arr.shape[0] else []

    # ---- per video (in RAM on first use) --------------------------------------------------
    @cached_property
    def videos(self) -> dict[str, np.ndarray]:
        return read_unit(self.path / "videos")[0]

    @cached_property
    def video_index(self) -> dict[str, int]:
        return {str(v): i for i, v in enumerate(self.videos["video_id"])}

    @cached_property
    def clip_offsets(self) -> np.ndarray:
        """(n_videos + 1,): the clips of video i are clip rows clip_offsets[i]:clip_offsets[i+1]."""
        return zarr.open_array(zarr_location(self.path / "videos" / "clip_offsets"), mode="r")[...]

    # ---- per clip (read on demand) ----------------------------------------------------------
    @cached_property
    def _clips(self) -> zarr.Group:
        return zarr.open_group(zarr_location(self.path / "clips"), mode="r")

    @cached_property
    def _columns(self) -> dict[str, RowReader]:
        return {name: RowReader(self.path / "clips" / name) for name, arr in self._clips.arrays()
                if arr.dtype.kind != "T"}

    def clip_rows(self, column: str, a: int, b: int) -> np.ndarray:
        """A numeric clip column (video, start, end) for clips a..b-1."""
        return self._columns[column].rows(a, b)

    def clip_values(self, column: str, idx) -> np.ndarray:
        """Any clip column (text, label_<col>, ...) at the clip indices ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        if column in self._columns:
            return self._columns[column].take(idx)
        if not len(idx):
            return np.zeros(0, dtype=object)
        value = self._clips[column].get_orthogonal_selection(idx)
        return value.astype(object) if value.dtype.kind == "T" else value

    def clip_video(self, idx) -> np.ndarray:
        return np.searchsorted(self.clip_offsets, np.asarray(idx, dtype=np.int64), side="right") - 1

    def clip_index(self, keys) -> np.ndarray:
        """Clip keys ``<video_id>#<n>`` (the n-th clip of the video) -> clip indices."""
        out = np.empty(len(keys), np.int64)
        for j, key in enumerate(keys):
            vid, _, n = str(key).rpartition("#")
            v = self.video_index.get(vid)
            if v is None or not n.isdigit() or int(n) >= self.clip_offsets[v + 1] - self.clip_offsets[v]:
                raise KeyError(f"unknown clip key {key!r}")
            out[j] = self.clip_offsets[v] + int(n)
        return out

    def clip_keys(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        vids = self.clip_video(idx)
        ids = self.videos["video_id"]
        return np.array([f"{ids[v]}#{i - self.clip_offsets[v]}" for v, i in zip(vids.tolist(), idx.tolist())],
                        dtype=object)

    def labels(self, idx=None) -> dict[str, np.ndarray]:
        """Label columns (video-level ones repeated per clip) at clip indices ``idx`` (default: all clips)."""
        idx = np.arange(self.n_clips) if idx is None else np.asarray(idx, dtype=np.int64)
        out = {k[len("label_"):]: v[self.clip_video(idx)] for k, v in self.videos.items() if k.startswith("label_")}
        for name in self._clips.array_keys():
            if name.startswith("label_"):
                out[name[len("label_"):]] = self.clip_values(name, idx)
        return out

    # ---- status --------------------------------------------------------------------------
    def _status_index(self, group: str) -> zarr.Group | None:
        """The consolidated ``status/<group>`` unit, if no unit was committed or replaced since it was written."""
        index = self.path / "status" / group
        if not index.is_dir():
            return None
        g = zarr.open_group(zarr_location(index), mode="r")
        committed = self.committed(group)
        if not is_local(self.path):  # object storage keeps no folder times: a synced store is read as synced
            return g if g.attrs.get("parts") == len(committed) else None
        newest = max((self.unit_path(p, group).stat().st_mtime_ns for p in committed), default=0)
        return g if g.attrs.get("parts") == len(committed) and newest <= g.attrs.get("written_ns", -1) else None

    def _scan(self, group: str) -> dict[str, np.ndarray]:
        """status, error, duration per video, read from every committed unit ('pending' where none)."""
        out = {"status": np.full(self.n_videos, "pending", dtype=object),
               "error": np.full(self.n_videos, "", dtype=object), "duration": np.zeros(self.n_videos)}
        for p in self.committed(group):
            a, b = self.part_range(p)
            g = zarr.open_group(zarr_location(self.unit_path(p, group)), mode="r")
            for k in out:
                value = g[k][...]
                out[k][a:b] = value.astype(object) if value.dtype.kind == "T" else value
        return out

    def _video_column(self, group: str, name: str) -> np.ndarray:
        """A per-video column of ``group``'s status (status, error, ok, duration, clips_beyond), read once per
        store object: from the consolidated ``status/<group>`` unit when it is up to date (checked once), else
        from one scan of every committed unit. Only the columns asked for are loaded."""
        if (group, name) not in self._video_cache:
            if group not in self._index:
                self._index[group] = self._status_index(group)
            if (g := self._index[group]) is not None:
                value = g[name][...]
                value = value.astype(object) if value.dtype.kind == "T" else value
            else:
                if group not in self._scans:
                    self._scans[group] = self._scan(group)
                scan = self._scans[group]
                value = (np.isin(scan["status"], USABLE) if name == "ok" else
                         self.clips_beyond(scan["duration"]) if name == "clips_beyond" else scan[name])
            self._video_cache[group, name] = value
        return self._video_cache[group, name]

    def video_status(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(status, error) per video; 'pending' where the part is not committed yet."""
        return self._video_column(group, "status"), self._video_column(group, "error")

    def video_ok(self, group: str) -> np.ndarray:
        """(n_videos,) bool: the video's features in ``group`` are committed and usable: status 'ok', or
        'truncated' (rows up to where the file broke off; video_duration says how far). No strings in RAM."""
        return self._video_column(group, "ok")

    def video_duration(self, group: str) -> np.ndarray:
        """Decoded seconds per video (0 where not ok or pending)."""
        return self._video_column(group, "duration")

    def video_clips_beyond(self, group: str) -> np.ndarray:
        """Per video, clips starting at or after its decoded duration in ``group``."""
        return self._video_column(group, "clips_beyond")

    def clips_beyond(self, duration: np.ndarray) -> np.ndarray:
        """Per video, its clips that start at or after ``duration`` (nothing of the video to read for them),
        counted a chunk of the clip table at a time."""
        out = np.zeros(self.n_videos, np.int64)
        for a in range(0, self.n_clips, CLIP_CHUNK):
            b = min(self.n_clips, a + CLIP_CHUNK)
            v = self.clip_video(np.arange(a, b))
            np.add.at(out, v[self.clip_rows("start", a, b) >= duration[v]], 1)
        return out

    def forget(self, group: str) -> None:
        """Drop what was read of ``group``'s status (after status.write_status_index rewrote it)."""
        for cache in (self._index, self._scans):
            cache.pop(group, None)
        self._video_cache = {k: v for k, v in self._video_cache.items() if k[0] != group}

    # ---- reads ---------------------------------------------------------------------------
    def unit(self, p: int, group: str) -> Unit:
        if (p, group) not in self._units:  # committed units are immutable: safe to cache
            if len(self._units) >= self.MAX_UNITS:  # bounded: each holds memory maps
                self._units.pop(next(iter(self._units)))
            path = self.unit_path(p, group)
            if not path.is_dir():
                raise KeyError(f"group {group!r} has no committed data for part {p} in {self.path} "
                               "(extraction unfinished? `pipeline status`)")
            data, offsets = RowReader(path / "data"), RowReader(path / "offsets")
            offsets = offsets.rows(0, len(offsets))
            a, b = self.part_range(p)
            if why := offsets_problem(offsets, len(data), b - a + 1):
                raise damaged(path / "offsets", why)
            self._units[p, group] = Unit(data, offsets, RowReader(path / "bytes") if (path / "bytes").is_dir() else None)
        return self._units[p, group]

    def video_rows(self, group: str, v: int):
        """``rows(a, b)``: rows a..b-1 of video v's features in ``group``, clamped to the rows it has
        (Python slice semantics for a, b >= 0); only those rows are copied out of the mapped chunks."""
        p = v // self.part_size
        u = self.unit(p, group)
        lo, hi = int(u.offsets[v - p * self.part_size]), int(u.offsets[v - p * self.part_size + 1])

        def rows(a: int = 0, b: int | None = None) -> np.ndarray:
            a = lo + min(a, hi - lo)
            return u.data.rows(a, max(a, lo + min(hi - lo, hi - lo if b is None else b)))
        return rows

    def video_files(self, group: str, v: int, a: int = 0, b: int | None = None) -> list[np.ndarray]:
        """Rows a..b-1 of video v in a group of encoded files (``frames``: one JPEG per second), clamped as
        ``video_rows``: each file's bytes (uint8), read in one run (a video's files lie one after another)."""
        ranges = self.video_rows(group, v)(a, b)
        u = self.unit(v // self.part_size, group)
        if u.bytes is None:
            raise KeyError(f"group {group!r} holds features, not encoded files")
        if not len(ranges):
            return []
        first = int(ranges[0, 0])
        block = u.bytes.rows(first, int(ranges[-1, 1]))
        return [block[s - first:e - first] for s, e in ranges.tolist()]

    def read(self, group: str, keys) -> list[np.ndarray]:
        """Features of each clip's time range, for a batch of clip keys (or clip indices)."""
        rate = self.rate(group)
        if rate is None:
            raise KeyError(f"{group!r} is not a time-indexed group")
        idx = np.asarray(keys, dtype=np.int64) if np.asarray(keys).dtype.kind in "iu" else self.clip_index(keys)
        vids = self.clip_video(idx)
        first = np.floor(self.clip_values("start", idx) * rate).astype(np.int64)
        last = np.floor(self.clip_values("end", idx) * rate).astype(np.int64) + 1
        parts = vids // self.part_size
        out: list = [None] * len(idx)
        for p in np.unique(parts).tolist():  # one unit per part touched; each clip's rows are one slice
            sel = np.flatnonzero(parts == p)
            u = self.unit(p, group)
            local = vids[sel] - p * self.part_size
            n = u.offsets[local + 1] - u.offsets[local]
            a = np.minimum(n, first[sel])
            a, b = u.offsets[local] + a, u.offsets[local] + np.maximum(a, np.minimum(n, last[sel]))
            u.data.prefetch(a, b)  # object storage: the unit's chunks in one request
            for j, lo, hi in zip(sel.tolist(), a.tolist(), b.tolist()):
                out[j] = u.data.rows(lo, hi)
        return out

    def load_group(self, group: str) -> Group:
        """A whole time-indexed group in RAM (tools and tests on small stores; trainers stream instead)."""
        if group == "word2vec":
            raise ValueError("word2vec is per clip: use the text reader")
        committed = self.committed(group)
        if not committed:
            raise KeyError(f"group {group!r} has no data in {self.path} (have: {sorted(self.groups)})")
        datas, lengths = [], []
        for p in range(self.n_parts):
            a, b = self.part_range(p)
            if p not in committed:
                lengths.append(np.zeros(b - a, np.int64))
                continue
            u = self.unit(p, group)
            datas.append(u.data.rows(0, len(u.data)))
            lengths.append(np.diff(u.offsets))
        status, error = self.video_status(group)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        return Group(group, np.concatenate(datas), offsets, status, error, self.rate(group))

    # ---- text ----------------------------------------------------------------------------
    @cached_property
    def _text(self) -> zarr.Group:
        if not (self.path / "word2vec").is_dir():
            raise KeyError(f"no word2vec group in {self.path} (extract with --word2vec)")
        return zarr.open_group(zarr_location(self.path / "word2vec"), mode="r")

    @cached_property
    def _text_readers(self) -> dict[str, RowReader]:
        return self._id_readers("word2vec")

    def _id_readers(self, unit: str) -> dict[str, RowReader]:
        """Memory-mapped ``ids`` and ``offsets`` of a token-id unit (word2vec, text/<group>), opened once."""
        cache = self.__dict__.setdefault("_id_units", {})
        if unit not in cache:
            if not (self.path / unit / "offsets").exists():
                raise KeyError(f"no token ids at {self.path / unit} (extract the {unit.split('/')[-1]} group first)")
            cache[unit] = {k: RowReader(self.path / unit / k) for k in ("ids", "offsets")}
        return cache[unit]

    def word_ids(self, a: int, b: int) -> list[np.ndarray]:
        """Token ids (rows of ``word_vectors()``) of clips a..b-1."""
        off = self._text_readers["offsets"].rows(a, b + 1)
        ids = self._text_readers["ids"].rows(int(off[0]), int(off[-1])) if b > a else np.zeros(0, np.int32)
        return [ids[off[i] - off[0]:off[i + 1] - off[0]] for i in range(b - a)]

    def word_ids_at(self, idx, group: str = "word2vec") -> list[np.ndarray]:
        """Token ids of the clips at indices ``idx`` (any order): two offset lookups and one row run per clip.
        word2vec: rows of ``word_vectors()``; a per-clip text group (``hf_text``): its tokenizer's ids, none
        for a clip whose status is not ok (an empty caption still tokenizes to its special tokens)."""
        idx = np.asarray(idx, dtype=np.int64)
        readers = self._text_readers if group == "word2vec" else self._id_readers(f"text/{group}")
        lo, hi = readers["offsets"].take(idx), readers["offsets"].take(idx + 1)
        if group != "word2vec":
            hi = np.where(self.text_status(idx, group) == "ok", hi, lo)
        return [readers["ids"].rows(int(x), int(y)) for x, y in zip(lo, hi)]

    def clip_text(self, group: str, idx) -> np.ndarray:
        """Embedding rows of a per-clip text group (``text/<group>``, e.g. hf_text) at clip indices ``idx``."""
        path = self.path / "text" / group
        if not path.is_dir():
            raise KeyError(f"no text group {group!r} in {self.path} (extract it with --groups {group})")
        return RowReader(path / "embedding").take(np.asarray(idx, dtype=np.int64))

    def text_ok_per_video(self, group: str = "word2vec") -> np.ndarray:
        """Clips with at least one known word (word2vec; recorded when written), or whose caption a per-clip
        text group (hf_text) tokenized (status ok; counted a chunk at a time), per video."""
        if group == "word2vec":
            return self._text["ok_per_video"][...]
        status, n = self._status_array(group), self.n_clips
        ok = np.zeros(self.n_videos, np.int64)
        for a in range(0, n, CLIP_CHUNK):
            b = min(n, a + CLIP_CHUNK)
            good = status[a:b].astype(object) == "ok"
            ok += np.bincount(self.clip_video(np.arange(a, b)), weights=good, minlength=self.n_videos).astype(np.int64)
        return ok

    def word_vectors(self) -> np.ndarray:
        return self._text["vectors"][...]

    def n_words(self) -> int:
        """Rows of word_vectors(), without reading them."""
        return int(self._text["vectors"].shape[0])

    def text_status_counts(self, group: str = "word2vec") -> dict[str, int]:
        """Clips per status of a text group (word2vec, or text/<group>): recorded when it was written, else
        counted a chunk at a time."""
        from collections import Counter

        unit = self.path / ("word2vec" if group == "word2vec" else f"text/{group}")
        if "counts" in (recorded := attributes_of(unit)):
            return dict(recorded["counts"])
        arr = zarr.open_array(zarr_location(unit / "status"), mode="r")
        counts: Counter = Counter()
        for a in range(0, arr.shape[0], CLIP_CHUNK):
            counts.update(arr[a:a + CLIP_CHUNK].astype(object).tolist())
        return dict(counts)

    def text_status(self, idx, group: str = "word2vec") -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        arr = self._text["status"] if group == "word2vec" else self._status_array(group)
        return arr.get_orthogonal_selection(idx).astype(object) if len(idx) else np.zeros(0, object)

    def _status_array(self, group: str) -> zarr.Array:
        cache = self.__dict__.setdefault("_status_arrays", {})
        if group not in cache:
            cache[group] = zarr.open_array(zarr_location(self.path / "text" / group / "status"), mode="r")
        return cache[group]
