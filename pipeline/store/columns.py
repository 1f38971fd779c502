"""Streamed columns: rows appended to a Zarr group's arrays a whole chunk at a time (the clip table, the text
groups, labels, embeddings), so RAM holds one chunk per column whatever the table's length."""
from __future__ import annotations

import numpy as np
import zarr

from .layout import CLIP_CHUNK, dimension_names

class ColumnWriter:
    """Appends rows to columns of a Zarr group, one whole chunk at a time (RAM: one chunk per column).
    A column is a dtype (1-D) or (dtype, row width) (2-D). Numbers are stored uncompressed (so readers
    memory-map them), strings with Zarr's default codec."""

    def __init__(self, group: zarr.Group, dtypes: dict, chunk: int = CLIP_CHUNK, dim: str = "clip"):
        """``dim``: the name of the row axis (Zarr's dimension_names, as xarray reads them)."""
        self.group, self.chunk, self.n, self.dim = group, chunk, 0, dim
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
                self.arrays[name] = self.group.create_array(
                    name, shape=(0, *row), dtype=dt, chunks=(chunk, *row),
                    dimension_names=dimension_names(name, 1 + len(row), self.dim),
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
