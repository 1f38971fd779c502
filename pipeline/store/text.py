"""Per-clip text units: ``word2vec/`` (token ids renumbered to the words used, and their vectors) and
``text/<group>`` (an embedding and the tokenizer's ids per clip), streamed over the clip table."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np
import zarr

from .columns import ColumnWriter
from .layout import CLIP_CHUNK, TMP_PREFIX, dimension_names, ensure_group, scratch
from .units import commit

if TYPE_CHECKING:
    from .reader import FeatureStore

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

    ids_out = ColumnWriter(group, {"ids": "int32"}, chunk=1 << 20, dim="token")
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
    for name, value, first in (("ok_per_video", ok_per_video, "video"), ("vocab_rows", vocab_rows, "word"),
                               ("vectors", np.asarray(vectors(vocab_rows), dtype=np.float32), "word")):
        group.create_array(name, shape=value.shape, dtype=value.dtype, compressors=None,
                           dimension_names=dimension_names(name, value.ndim, first))[...] = value
    group.attrs.update({"group": "word2vec", "counts": dict(counts)})
    return dict(counts)


def _ends_to_offsets(group: zarr.Group, n: int) -> None:
    """Replace the per-clip ``ends`` column with ``offsets`` (n + 1: 0, then the ends), copied a block at a
    time (136M clips would be 1 GB at once)."""
    big = 1 << 22
    offsets = group.create_array("offsets", shape=(n + 1,), dtype="int64", chunks=(min(CLIP_CHUNK, n + 1),),
                                 dimension_names=("clip_edge",),
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
        ids_out = ColumnWriter(root, {"ids": "int32"}, chunk=1 << 20, dim="token")
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
