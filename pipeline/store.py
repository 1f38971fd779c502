"""The Zarr feature store: layout, atomic writes and the read API.

    store.zarr/
      zarr.json                  root attrs: plan checksum, part size, label columns, per-group provenance
      videos/                    video_id, path, part, label_<col>           (one row per video)
      clips/                     key, video, start, end, text, label_<col>  (one row per clip, sorted by video)
      word2vec/                  ids + offsets per clip, status, vocab_rows, vectors (used words only)
      parts/p000000/<group>/     data (rows, dim) float16, offsets (videos+1), status, error, duration

Every unit under ``parts/`` (and ``word2vec/``) is written to a temporary directory and committed by
one ``os.rename``: a unit either exists whole or not at all, so a killed run never leaves a partial
video behind, and a rerun only computes units that are missing.
"""
from __future__ import annotations

import mmap
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

PART = "p{:06d}"
TMP_PREFIX = ".tmp-"
# rows per second of each time-indexed group (davenet: log-mel at 100 fps downsampled 16x)
RATES = {"resnet152": 1.0, "frames": 1.0, "logmel": 100.0, "davenet": 100.0 / 16}


def _write_array(group: zarr.Group, name: str, value: np.ndarray) -> None:
    if value.dtype.kind in "UO":
        arr = group.create_array(name, shape=value.shape, dtype=str, compressors=None)
        if value.size:
            arr[...] = value.astype(str)
        return
    rows = max(1, (1 << 20) // max(1, value[:1].nbytes)) if value.ndim == 2 else 1 << 16
    chunks = (rows,) + value.shape[1:]
    arr = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks, compressors=None)
    if value.size:
        arr[...] = value


def write_unit(final: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict,
               replace: bool = False) -> bool:
    """Write a Zarr group to a temp dir beside ``final`` and rename it into place.

    Returns False if ``final`` already existed (another writer committed it first; contents are
    deterministic, so its copy is as good as ours) unless ``replace``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    group = zarr.open_group(str(tmp), mode="w")
    for name, value in arrays.items():
        _write_array(group, name, np.asarray(value))
    group.attrs.update(attrs)
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


def clean_temporaries(store: str | os.PathLike) -> int:
    """Remove debris of killed writers: uncommitted temp dirs beside the store's units (and the store's own
    planning temp beside it). Only the levels where units live are listed, never the chunk files."""
    store = Path(store)
    places = [(store.parent, f"{TMP_PREFIX}{store.name}-"), (store, TMP_PREFIX)]
    if (store / "parts").is_dir():
        places += [(store / "parts", TMP_PREFIX)]
        places += [(d, TMP_PREFIX) for d in (store / "parts").iterdir() if d.is_dir()]
    n = 0
    for folder, prefix in places:
        if folder.is_dir():
            for d in folder.iterdir():
                if d.name.startswith(prefix) and d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
    return n


def read_unit(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    group = zarr.open_group(str(path), mode="r")
    out = {}
    for name, arr in group.arrays():
        value = arr[...]
        out[name] = value.astype(object) if value.dtype.kind == "T" else value  # zarr strings -> python str
    return out, dict(group.attrs)


class RowReader:
    """Rows of a committed (immutable) 2-D unit array.

    Uncompressed little-endian chunks are memory-mapped and sliced directly (the OS page cache does the
    caching); anything else goes through zarr. Chunks never written (all fill value) read as the fill value.
    """

    MAX_MAPS = 256

    def __init__(self, arr: zarr.Array, path: Path):
        self.arr, self.path = arr, path
        self.rows_per_chunk = arr.chunks[0]
        codecs = arr.metadata.to_dict().get("codecs", ())
        self.direct = (arr.compressors == () and arr.filters == () and len(codecs) == 1
                       and codecs[0]["name"] == "bytes" and np.dtype(arr.dtype).byteorder in "<=|"
                       and arr.chunks[1:] == arr.shape[1:])
        self._maps: dict[int, np.ndarray | None] = {}

    def _chunk(self, c: int) -> np.ndarray | None:
        if c not in self._maps:
            if len(self._maps) >= self.MAX_MAPS:
                self._maps.pop(next(iter(self._maps)))
            f = self.path / self.arr.metadata.encode_chunk_key((c,) + (0,) * (self.arr.ndim - 1))
            self._maps[c] = None
            if f.is_file():
                with open(f, "rb") as fh:  # a plain ndarray over the mapping: no np.memmap per-index overhead
                    buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps[c] = np.frombuffer(buf, dtype=self.arr.dtype).reshape(
                    (self.rows_per_chunk,) + self.arr.shape[1:])
        return self._maps[c]

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows a..b-1 (a contiguous run, as a clip's rows are), copied out of at most a few chunks."""
        if not self.direct:
            return self.arr[a:b]
        pieces, r = [], self.rows_per_chunk
        for c in range(a // r, (b - 1) // r + 1) if b > a else []:
            lo, hi = max(a, c * r) - c * r, min(b, (c + 1) * r) - c * r
            m = self._chunk(c)
            pieces.append(m[lo:hi] if m is not None else
                          np.full((hi - lo,) + self.arr.shape[1:], self.arr.metadata.fill_value, self.arr.dtype))
        if len(pieces) == 1:
            return pieces[0].copy()
        return np.concatenate(pieces) if pieces else np.zeros((0,) + self.arr.shape[1:], self.arr.dtype)


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


class FeatureStore:
    """Read side of the store. Cheap to open; arrays are read on demand."""

    MAX_UNITS = 256

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"no feature store at {self.path} (run `pipeline extract` first)")
        self.root = zarr.open_group(str(self.path), mode="r")
        self.attrs = dict(self.root.attrs)
        if "mmcache" not in self.attrs:
            raise ValueError(f"{self.path} is a Zarr group but not an mmcache feature store")
        self.meta = self.attrs["mmcache"]
        self.videos, _ = read_unit(self.path / "videos")
        self.clips, _ = read_unit(self.path / "clips")
        self.n_videos, self.n_clips = len(self.videos["video_id"]), len(self.clips["key"])
        self.part_size = int(self.meta["part_size"])
        self._key_index: dict[str, int] | None = None
        self._units: dict[tuple[int, str], tuple[RowReader, np.ndarray]] = {}

    # ---- layout --------------------------------------------------------------------------
    @property
    def groups(self) -> dict[str, dict]:
        return dict(self.attrs.get("groups", {}))

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
        return {int(d[1:]) for d in os.listdir(parts) if d.startswith("p") and (parts / d / group).is_dir()}

    def labels(self, table: str = "clips") -> dict[str, np.ndarray]:
        t = self.clips if table == "clips" else self.videos
        return {k[len("label_"):]: v for k, v in t.items() if k.startswith("label_")}

    # ---- status --------------------------------------------------------------------------
    def video_status(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(status, error) per video; 'pending' where the part is not committed yet."""
        status = np.full(self.n_videos, "pending", dtype=object)
        error = np.full(self.n_videos, "", dtype=object)
        for p in self.committed(group):
            a, b = self.part_range(p)
            g = zarr.open_group(str(self.unit_path(p, group)), mode="r")
            status[a:b], error[a:b] = g["status"][...].astype(object), g["error"][...].astype(object)
        return status, error

    # ---- reads ---------------------------------------------------------------------------
    def load_group(self, group: str) -> Group:
        """Load a whole time-indexed group into RAM (what the trainers do)."""
        if group == "word2vec":
            raise ValueError("word2vec is per clip: use load_text()")
        datas, lengths, status, error = [], [], [], []
        committed = self.committed(group)
        if not committed:
            raise KeyError(f"group {group!r} has no data in {self.path} (have: {sorted(self.groups)})")
        for p in range(self.n_parts):
            a, b = self.part_range(p)
            if p not in committed:
                datas.append(None)
                lengths.append(np.zeros(b - a, np.int64))
                status.append(np.full(b - a, "pending", dtype=object))
                error.append(np.full(b - a, "", dtype=object))
                continue
            arrays, _ = read_unit(self.unit_path(p, group))
            datas.append(arrays["data"])
            lengths.append(np.diff(arrays["offsets"]))
            status.append(arrays["status"].astype(object))
            error.append(arrays["error"].astype(object))
        dim = next(d.shape[1] for d in datas if d is not None)
        dtype = next(d.dtype for d in datas if d is not None)
        data = np.concatenate([d if d is not None else np.zeros((0, dim), dtype) for d in datas])
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        return Group(group, data, offsets, np.concatenate(status), np.concatenate(error), RATES.get(group))

    def load_text(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(token ids per clip, status per clip, vectors): ids index rows of ``vectors``."""
        arrays, _ = read_unit(self.path / "word2vec")
        ids, off = arrays["ids"], arrays["offsets"]
        return [ids[off[i]:off[i + 1]] for i in range(len(off) - 1)], arrays["status"], arrays["vectors"]

    def clip_index(self, keys) -> np.ndarray:
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.clips["key"])}
        try:
            return np.array([self._key_index[k] for k in keys], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"unknown clip key {e.args[0]!r}") from None

    def read(self, group: str, keys) -> list[np.ndarray]:
        """Features of each clip's time range, for a batch of clip keys: one read call per part touched."""
        rate = RATES.get(group)
        if rate is None:
            raise KeyError(f"{group!r} is not a time-indexed group")
        idx = self.clip_index(keys)
        vids = self.clips["video"][idx]
        first = np.floor(self.clips["start"][idx] * rate).astype(np.int64)
        last = np.floor(self.clips["end"][idx] * rate).astype(np.int64) + 1
        parts = vids // self.part_size
        out: list[np.ndarray | None] = [None] * len(idx)
        for p in np.unique(parts):
            sel = np.flatnonzero(parts == p)
            data, offsets = self._unit(int(p), group)
            local = vids[sel] - int(p) * self.part_size
            n = offsets[local + 1] - offsets[local]
            a, b = np.minimum(n, first[sel]), np.minimum(n, last[sel])
            a, b = offsets[local] + a, offsets[local] + np.maximum(a, b)
            for j, lo, hi in zip(sel.tolist(), a.tolist(), b.tolist()):
                out[j] = data.rows(lo, hi)
        return out  # type: ignore[return-value]

    def _unit(self, p: int, group: str) -> tuple[RowReader, np.ndarray]:
        if (p, group) not in self._units:  # committed units are immutable: safe to cache
            if len(self._units) >= self.MAX_UNITS:  # bounded: each holds memory maps
                self._units.pop(next(iter(self._units)))
            path = self.unit_path(p, group)
            g = zarr.open_group(str(path), mode="r")
            self._units[p, group] = RowReader(g["data"], path / "data"), g["offsets"][...]
        return self._units[p, group]
