"""Reading rows of a committed array fast: its own ``zarr.json``, memory-mapped uncompressed chunks, sealed
chunk files checked for presence and size."""
from __future__ import annotations

import mmap
import os

import numpy as np
import zarr

from .layout import damaged, read_json
from .location import is_local, locate, zarr_location
from .seal import CRC_KEY

class RowReader:
    """Rows of a committed (immutable) 1-D or 2-D array, opened from its own ``zarr.json`` (no Zarr
    machinery on the hot path: ~50 us to open, against ~3 ms for zarr.open_group).

    Uncompressed little-endian chunks are memory-mapped and sliced directly (the OS page cache does the
    caching); anything else goes through zarr. A chunk file the array was sealed with that is missing or
    of the wrong size raises StoreError; one never written (all fill value) reads as the fill value.
    """

    MAX_MAPS = 64

    def __init__(self, path: str | os.PathLike):
        self.path = locate(path)
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
            self.arr = zarr.open_array(zarr_location(self.path), mode="r")
        self._maps: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, c: int) -> np.ndarray | None:
        if c not in self._maps:
            self._hold(c, self._read(self.path / self._key(c)))
        return self._maps[c]

    def _key(self, c: int) -> str:
        return "/".join(map(str, ("c", c) + (0,) * (len(self.shape) - 1)))

    def _hold(self, c: int, buf) -> None:
        """Chunk ``c`` from its file's bytes (None: no file), kept for the next reads."""
        if len(self._maps) >= self.MAX_MAPS:
            self._maps.pop(next(iter(self._maps)))
        key, m = self._key(c), None
        if buf is not None:
            if len(buf) != self.chunk_bytes:
                raise damaged(self.path / key, f"{len(buf)} bytes, a chunk is {self.chunk_bytes}")
            m = np.frombuffer(buf, dtype=self.dtype).reshape((self.rows_per_chunk,) + self.shape[1:])
        elif self.sealed is not None and key in self.sealed:
            raise damaged(self.path / key, "chunk file missing")
        self._maps[c] = m

    def prefetch(self, a, b) -> None:
        """On object storage, fetch in one concurrent request the chunks that the row runs [a, b) touch and
        that are not held yet (a batch's clips, instead of one round trip per chunk). Local: nothing to do."""
        if is_local(self.path) or not self.direct:
            return
        r = self.rows_per_chunk
        need = sorted({c for lo, hi in zip(np.asarray(a).tolist(), np.asarray(b).tolist()) if hi > lo
                       for c in range(lo // r, (hi - 1) // r + 1)} - set(self._maps))[:self.MAX_MAPS]
        if need:
            where = {c: (self.path / self._key(c)).path for c in need}
            got = self.path.fs.cat(list(where.values()), on_error="omit")
            for c, key in where.items():
                self._hold(c, got.get(key))

    @staticmethod
    def _read(f):
        """A chunk file's bytes: memory-mapped where local (a plain ndarray over the mapping, no np.memmap
        per-index overhead; the page cache caches), read whole from object storage; None if there is none."""
        if not is_local(f):
            try:
                return f.read_bytes()
            except FileNotFoundError:
                return None
        if not f.is_file():
            return None
        with open(f, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(fh.fileno()).st_size else b""

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
