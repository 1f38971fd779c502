"""The Zarr feature store: layout, atomic writes and the lazy read API.

    store.zarr/                  a Zarr v3 group all the way down (README: "Store layout")
      zarr.json                  attrs: mmcache (version, plan checksum, part size, counts), per-group provenance
      problems                   every bad manifest/caption row found while planning (strings)
      videos/                    video_id, path, part, clip_offsets (n+1), label_<col>     (one row per video)
      clips/                     video, start, end, text, label_<col>   (one row per clip, grouped by video,
                                 chunked: clips of video i are rows clip_offsets[i]:clip_offsets[i+1])
      word2vec/                  ids + offsets per clip, status, ok_per_video, vocab_rows, vectors
      parts/p000000/<group>/     data (rows, dim) float16, offsets (videos+1), status, error, duration
      status/<group>/            every video's status in one place (rewritten after each extraction)

Every unit under ``parts/`` (and ``word2vec/``, ``status/``) is written to a temporary directory and
committed by one ``os.rename``: a unit exists whole or not at all, so a killed run never leaves a partial
video behind, and a rerun only computes units that are missing. Opening a store reads one small JSON file;
per-video columns load on first use (~1.2M rows at HowTo100M size), per-clip columns are only ever read
for the clips asked for.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from .integrity import CRC_KEY, offsets_problem, seal

FORMAT_VERSION = 2
PART = "p{:06d}"
TMP_PREFIX = ".tmp-"
CLIP_CHUNK = 1 << 16  # rows per chunk of the per-clip columns
# rows per second of the built-in groups, for stores whose group records carry no rate (each extractor records its own)
RATES = {"resnet152": 1.0, "frames": 1.0, "logmel": 100.0, "davenet": 100.0 / 16}
# per-video statuses whose rows trainers read ('truncated': the part of the file before it broke off)
USABLE = ("ok", "truncated")
GROUP_JSON = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class StoreError(ValueError):
    """The path is not a usable feature store (missing, another format, damaged)."""


class DiskFull(StoreError):
    """The disk filled up while writing; what was being written is removed, finished units are kept."""


@contextmanager
def scratch(tmp: Path, what: Path):
    """Around writing the temporary ``tmp`` (file or folder) for ``what``: on any failure ``tmp`` is removed,
    and a full disk becomes one DiskFull line instead of a traceback from deep inside Zarr."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = next(p for p in Path(what).absolute().parents if p.exists())
            raise DiskFull(f"disk full while writing {what} ({shutil.disk_usage(where).free / 1e6:.0f} MB free "
                           f"there): free space or move the store, then rerun the same command; every unit "
                           "finished before is kept and the run resumes") from None
        raise


def damaged(path: Path, what: str) -> StoreError:
    """A StoreError for damaged data at ``path``, naming the store to verify."""
    root = next((p for p in path.parents if "mmcache" in _attributes(p)), "STORE")
    return StoreError(f"{path}: {what}; the store is damaged: `pipeline verify --store {root} --repair` lists "
                      "and removes every damaged unit for `pipeline extract` to recompute")


def _attributes(folder: Path) -> dict:
    try:
        return json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def read_json(path: Path) -> dict:
    """A Zarr metadata file; a damaged one is named in the error."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({e}); `pipeline extract` with --retry-failed or a new --store "
                         "rebuilds it") from None


def write_json(path: Path, value: dict) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with scratch(tmp, path):
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)


def ensure_group(path: str | os.PathLike) -> None:
    """Make ``path`` a Zarr v3 group if it is not one yet (atomic, safe with concurrent writers)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "zarr.json", GROUP_JSON)


def _write_array(group: zarr.Group, name: str, value: np.ndarray) -> None:
    if value.dtype.kind in "UO":
        arr = group.create_array(name, shape=value.shape, dtype=str)
        if value.size:
            arr[...] = value.astype(str)
        return
    rows = (max(1, (1 << 20) // max(1, value[:1].nbytes)) if value.ndim == 2
            else 1 << 22 if value.dtype == np.uint8 else 1 << 16)  # bytes (encoded files): 4 MB chunk files
    chunks = (max(1, min(rows, len(value))),) + value.shape[1:]  # no 1 MB chunk file for 3 rows
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


class ColumnWriter:
    """Appends rows to columns of a Zarr group, one whole chunk at a time (RAM: one chunk per column).
    A column is a dtype (1-D) or (dtype, row width) (2-D). Numbers are stored uncompressed (so readers
    memory-map them), strings with Zarr's default codec."""

    def __init__(self, group: zarr.Group, dtypes: dict, chunk: int = CLIP_CHUNK):
        self.group, self.chunk, self.n = group, chunk, 0
        self.specs = {name: (dt if isinstance(dt, tuple) else (dt, None)) for name, dt in dtypes.items()}
        self.arrays: dict[str, zarr.Array] = {}  # created at the first flush: a small table gets small chunks
        self.buffer: dict[str, list] = {name: [] for name in dtypes}
        self.buffered = 0

    def append(self, columns: dict[str, np.ndarray | list]) -> None:
        n = len(next(iter(columns.values())))
        for name, values in columns.items():
            dt = self.specs[name][0]
            self.buffer[name].append(np.asarray(values, dtype=object if dt is str else dt))
        self.buffered += n
        if self.buffered >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.arrays:
            chunk = max(1, self.buffered) if final and self.buffered < self.chunk else self.chunk
            for name, (dt, row) in self.specs.items():
                row = () if row is None else (row,)
                self.arrays[name] = self.group.create_array(name, shape=(0, *row), dtype=dt, chunks=(chunk, *row),
                                                            **({} if dt is str else {"compressors": None}))
        if not self.buffered:
            return
        joined = {name: np.concatenate(parts) for name, parts in self.buffer.items()}
        take = self.buffered if final else self.buffered // self.chunk * self.chunk
        for name, arr in self.arrays.items():
            arr.resize((self.n + take, *arr.shape[1:]))
            arr[self.n:self.n + take] = joined[name][:take]
            self.buffer[name] = [joined[name][take:]]
        self.n += take
        self.buffered -= take

    def close(self) -> int:
        self._flush(final=True)
        return self.n


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


def write_text(store: "FeatureStore", chunks, vocab_size: int, vectors) -> dict[str, int]:
    """Commit the word2vec unit from ``chunks``: (status per clip, token ids per clip) for consecutive clips,
    in clip order, streamed (RAM: one chunk, plus a flag per vocabulary word). Ids are renumbered to the
    words used; ``vectors(used_rows)`` gives their vectors."""
    tmp = store.path / f"{TMP_PREFIX}word2vec-{uuid.uuid4().hex[:8]}"
    with scratch(tmp, store.path / "word2vec"):
        counts = _fill_text(zarr.open_group(str(tmp), mode="w"), store, chunks, vocab_size, vectors)
    commit(tmp, store.path / "word2vec", replace=True)
    return counts


def _fill_text(group: zarr.Group, store: "FeatureStore", chunks, vocab_size: int, vectors) -> dict[str, int]:
    from collections import Counter

    ids_out = ColumnWriter(group, {"ids": "int32"}, chunk=1 << 20)
    per_clip = ColumnWriter(group, {"status": str, "ends": "int64"})
    used = np.zeros(vocab_size, bool)
    ok_per_video = np.zeros(store.n_videos, np.int32)
    counts: Counter = Counter()
    a = total = 0
    for status, ids in chunks:
        status = np.asarray(status, dtype=object)
        counts.update(status.tolist())
        flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
        used[flat] = True
        ids_out.append({"ids": flat})
        ends = total + np.cumsum([len(i) for i in ids], dtype=np.int64)
        total = int(ends[-1]) if len(ends) else total
        per_clip.append({"status": status, "ends": ends})
        np.add.at(ok_per_video, store.clip_video(a + np.flatnonzero(status == "ok")), 1)
        a += len(status)
    if a != store.n_clips:
        raise ValueError(f"text for {a} clips, but the store has {store.n_clips}")
    ids_out.close()
    per_clip.close()
    vocab_rows = np.flatnonzero(used)
    remap = (np.cumsum(used) - 1).astype(np.int32)
    big = 1 << 22
    for b in range(0, group["ids"].shape[0], big):
        group["ids"][b:b + big] = remap[group["ids"][b:b + big]]
    _ends_to_offsets(group, a)
    for name, value in (("ok_per_video", ok_per_video), ("vocab_rows", vocab_rows),
                        ("vectors", np.asarray(vectors(vocab_rows), dtype=np.float32))):
        group.create_array(name, shape=value.shape, dtype=value.dtype, compressors=None)[...] = value
    group.attrs.update({"group": "word2vec", "counts": dict(counts)})
    return dict(counts)


def _ends_to_offsets(group: zarr.Group, n: int) -> None:
    """Replace the per-clip ``ends`` column with ``offsets`` (n + 1: 0, then the ends), copied a block at a
    time (136M clips would be 1 GB at once)."""
    big = 1 << 22
    offsets = group.create_array("offsets", shape=(n + 1,), dtype="int64", chunks=(min(CLIP_CHUNK, n + 1),),
                                 compressors=None)
    offsets[0] = 0
    for b in range(0, n, big):
        offsets[b + 1:b + 1 + big] = group["ends"][b:b + big]
    del group["ends"]


def write_clip_text(store: "FeatureStore", group: str, chunks, dim: int) -> dict[str, int]:
    """Commit ``text/<group>``: per clip a status, an embedding row (C, dim) float16 and token ids
    (``ids[offsets[c]:offsets[c+1]]``), from ``chunks`` of (status, embeddings, ids) in clip order, streamed."""
    from collections import Counter

    final = store.path / "text" / group
    tmp = final.parent / f"{TMP_PREFIX}{group}-{uuid.uuid4().hex[:8]}"
    counts: Counter = Counter()
    with scratch(tmp, final):
        root = zarr.open_group(str(tmp), mode="w")
        per_clip = ColumnWriter(root, {"status": str, "embedding": ("float16", dim), "ends": "int64"})
        ids_out = ColumnWriter(root, {"ids": "int32"}, chunk=1 << 20)
        total = n = 0
        for status, emb, ids in chunks:
            counts.update(np.asarray(status, dtype=object).tolist())
            ends = total + np.cumsum([len(i) for i in ids], dtype=np.int64)
            total = int(ends[-1]) if len(ends) else total
            ids_out.append({"ids": np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)})
            per_clip.append({"status": status, "embedding": np.asarray(emb, np.float16), "ends": ends})
            n += len(status)
        if n != store.n_clips:
            raise ValueError(f"text for {n} clips, but the store has {store.n_clips}")
        per_clip.close()
        ids_out.close()
        _ends_to_offsets(root, n)
        root.attrs.update({"group": group, "counts": dict(counts)})
    ensure_group(final.parent)
    commit(tmp, final, replace=True)
    return dict(counts)


class StoreLock:
    """flock-based locks in a file beside the store (never inside: the store stays pure Zarr). Released by
    the OS when the holder dies, so a killed run never leaves a stale lock.

    * ``run()``: held shared for a whole extraction. Returns True when no other extraction holds it, i.e. when
      this run may remove temporaries (they can only be debris of dead writers).
    * ``attrs()``: exclusive, around every read-modify-write of the root attributes."""

    def __init__(self, store: str | os.PathLike):
        store = Path(store)
        store.parent.mkdir(parents=True, exist_ok=True)
        self._run = open(store.parent / f".{store.name}.lock", "a+")

    def run(self, clean=None) -> bool:
        """Hold the run lock shared for the whole extraction; True when no other extraction held it. Only
        then, and only while holding it exclusively (no other run can be writing), ``clean()`` removes the
        debris of killed writers: a later cleaning would remove the live temporaries of runs started since."""
        import fcntl

        # decided under a gate: flock's exclusive -> shared downgrade is not atomic (the lock is dropped, then
        # retaken), and a run testing in that gap would think itself alone too
        with open(f"{self._run.name}.gate", "a+") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(self._run, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone and clean is not None:
                clean()
            fcntl.flock(self._run, fcntl.LOCK_SH)  # held for the whole run: later runs see it
        return alone

    def attrs(self):
        import fcntl

        @contextmanager
        def held():
            with open(f"{self._run.name}.attrs", "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
        return held()

    def close(self) -> None:
        self._run.close()


def update_root_attrs(store: str | os.PathLike, change) -> dict:
    """Rewrite the root ``zarr.json`` atomically with ``change(attributes)`` applied (call under
    StoreLock.attrs() when other writers may be running); returns the new attributes."""
    path = Path(store) / "zarr.json"
    meta = read_json(path)
    meta["attributes"] = change(dict(meta.get("attributes", {})))
    write_json(path, meta)
    return meta["attributes"]


def add_groups(store: str | os.PathLike, metas: dict[str, dict]) -> dict:
    """Record the provenance of new feature groups in the root attributes; returns the root attributes."""
    def change(attrs):
        groups = dict(attrs.get("groups", {}))
        attrs["groups"] = {**groups, **{g: m for g, m in metas.items() if g not in groups}}
        return attrs
    return update_root_attrs(store, change)


def clean_temporaries(store: str | os.PathLike) -> int:
    """Remove debris of killed writers: uncommitted temp dirs beside the store's units (and the store's own
    planning temp beside it). Only the levels where units live are listed, never the chunk files."""
    store = Path(store)
    places = [(store.parent, f"{TMP_PREFIX}{store.name}-")]
    if (store / "zarr.json").exists():  # never inside a folder that is not a store
        places.append((store, TMP_PREFIX))
    for sub in ("parts", "status", "text"):
        if (store / sub).is_dir():
            places += [(store / sub, TMP_PREFIX)]
    if (store / "parts").is_dir():
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
    """Rows of a committed (immutable) 1-D or 2-D array, opened from its own ``zarr.json`` (no Zarr
    machinery on the hot path: ~50 us to open, against ~3 ms for zarr.open_group).

    Uncompressed little-endian chunks are memory-mapped and sliced directly (the OS page cache does the
    caching); anything else goes through zarr. A chunk file the array was sealed with that is missing or
    of the wrong size raises StoreError; one never written (all fill value) reads as the fill value.
    """

    MAX_MAPS = 64

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta = read_json(self.path / "zarr.json")
        self.shape = tuple(meta["shape"])
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.rows_per_chunk = chunks[0]
        codecs, keys = meta.get("codecs", []), meta.get("chunk_key_encoding", {})
        self.direct = (len(codecs) == 1 and codecs[0]["name"] == "bytes"
                       and codecs[0].get("configuration", {}).get("endian", "little") == "little"
                       and chunks[1:] == self.shape[1:] and keys.get("name") == "default"
                       and keys.get("configuration", {}).get("separator", "/") == "/"
                       and meta["data_type"] in np.sctypeDict)
        self.sealed = meta.get("attributes", {}).get(CRC_KEY)
        if self.direct:
            self.dtype, self.fill = np.dtype(meta["data_type"]), meta["fill_value"]
            self.chunk_bytes = self.rows_per_chunk * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        else:
            self.arr = zarr.open_array(str(self.path), mode="r")
        self._maps: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, c: int) -> np.ndarray | None:
        if c not in self._maps:
            if len(self._maps) >= self.MAX_MAPS:
                self._maps.pop(next(iter(self._maps)))
            key = "/".join(map(str, ("c", c) + (0,) * (len(self.shape) - 1)))
            f = self.path / key
            m = None
            if f.is_file():
                with open(f, "rb") as fh:  # a plain ndarray over the mapping: no np.memmap per-index overhead
                    if os.fstat(fh.fileno()).st_size != self.chunk_bytes:
                        raise damaged(f, f"{os.fstat(fh.fileno()).st_size} bytes, a chunk is {self.chunk_bytes}")
                    buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                m = np.frombuffer(buf, dtype=self.dtype).reshape((self.rows_per_chunk,) + self.shape[1:])
            elif self.sealed is not None and key in self.sealed:
                raise damaged(f, "chunk file missing")
            self._maps[c] = m
        return self._maps[c]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at any indices ``idx`` (one fancy index per chunk touched)."""
        idx = np.asarray(idx, dtype=np.int64)
        if not self.direct:
            return self.arr.get_orthogonal_selection((idx,) + (slice(None),) * (len(self.shape) - 1))
        out = np.empty((len(idx),) + self.shape[1:], self.dtype)
        chunk = idx // self.rows_per_chunk
        for c in np.unique(chunk).tolist():
            at = chunk == c
            m = self._chunk(c)
            out[at] = m[idx[at] - c * self.rows_per_chunk] if m is not None else self.fill
        return out

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows a..b-1 (a contiguous run, as a clip's rows are), copied out of at most a few chunks."""
        if not self.direct:
            return self.arr[a:b]
        pieces, r = [], self.rows_per_chunk
        for c in range(a // r, (b - 1) // r + 1) if b > a else []:
            lo, hi = max(a, c * r) - c * r, min(b, (c + 1) * r) - c * r
            m = self._chunk(c)
            pieces.append(m[lo:hi] if m is not None else
                          np.full((hi - lo,) + self.shape[1:], self.fill, self.dtype))
        if len(pieces) == 1:
            return pieces[0].copy()
        return np.concatenate(pieces) if pieces else np.zeros((0,) + self.shape[1:], self.dtype)


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
        self.path = Path(path)
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
        rate = self.groups.get(group, {}).get("rate", RATES.get(group))
        return None if rate is None else float(rate)

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

    def problems(self, limit: int | None = None) -> list[str]:
        """The first ``limit`` manifest/caption problems found while planning."""
        arr = zarr.open_array(str(self.path / "problems"), mode="r")
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
        return zarr.open_array(str(self.path / "videos" / "clip_offsets"), mode="r")[...]

    # ---- per clip (read on demand) ----------------------------------------------------------
    @cached_property
    def _clips(self) -> zarr.Group:
        return zarr.open_group(str(self.path / "clips"), mode="r")

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
        g = zarr.open_group(str(index), mode="r")
        committed = self.committed(group)
        newest = max((self.unit_path(p, group).stat().st_mtime_ns for p in committed), default=0)
        return g if g.attrs.get("parts") == len(committed) and newest <= g.attrs.get("written_ns", -1) else None

    def _scan(self, group: str) -> dict[str, np.ndarray]:
        """status, error, duration per video, read from every committed unit ('pending' where none)."""
        out = {"status": np.full(self.n_videos, "pending", dtype=object),
               "error": np.full(self.n_videos, "", dtype=object), "duration": np.zeros(self.n_videos)}
        for p in self.committed(group):
            a, b = self.part_range(p)
            g = zarr.open_group(str(self.unit_path(p, group)), mode="r")
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

    def write_status_index(self, group: str) -> None:
        """Consolidate every video's status of ``group`` into ``status/<group>`` (trainers read it at start)."""
        import time

        written = time.time_ns()
        committed = self.committed(group)
        scan = self._scan(group)
        write_unit(self.path / "status" / group, {**scan, "ok": np.isin(scan["status"], USABLE),
                                                  "clips_beyond": self.clips_beyond(scan["duration"])},
                   {"parts": len(committed), "written_ns": written}, replace=True)
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
        return zarr.open_group(str(self.path / "word2vec"), mode="r")

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
        if "counts" in (recorded := _attributes(unit)):
            return dict(recorded["counts"])
        arr = zarr.open_array(str(unit / "status"), mode="r")
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
            cache[group] = zarr.open_array(str(self.path / "text" / group / "status"), mode="r")
        return cache[group]
