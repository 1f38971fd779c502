"""Batched random clip reads from the store vs the same rows gathered from RAM.

Builds a store of synthetic ResNet-like float16 features (videos x ~T rows x 2048) with the real writer,
then times FeatureStore.read on random batches of clip keys against numpy fancy-indexing of the same
rows from the whole group loaded in RAM. Usage: python benchmarks/store.py [--videos 1000]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from pipeline.store import FeatureStore, write_unit


def build(path: Path, n_videos: int, part_size: int, rng) -> None:
    lengths = rng.integers(20, 60, n_videos)
    clips_per_video = 4
    video = np.repeat(np.arange(n_videos), clips_per_video)
    start = rng.uniform(0, 1, video.size) * (lengths[video] - 10)
    write_unit(path / "videos", {"video_id": np.array([f"v{i}" for i in range(n_videos)], dtype=object),
                                 "path": np.array([""] * n_videos, dtype=object)}, {})
    write_unit(path / "clips", {"key": np.array([f"v{v}#{i % clips_per_video}" for i, v in enumerate(video)],
                                                dtype=object),
                                "video": video.astype(np.int32), "start": start, "end": start + 8.0,
                                "text": np.array([""] * video.size, dtype=object)}, {})
    for p in range(0, n_videos, part_size):
        ls = lengths[p:p + part_size]
        data = np.abs(rng.normal(size=(int(ls.sum()), 2048))).astype(np.float16)
        write_unit(path / "parts" / f"p{p // part_size:06d}" / "resnet152",
                   {"data": data, "offsets": np.r_[0, np.cumsum(ls)].astype(np.int64),
                    "status": np.array(["ok"] * len(ls), dtype=object), "error": np.array([""] * len(ls), dtype=object),
                    "duration": ls.astype(np.float64)}, {})
    root = zarr.open_group(str(path), mode="a")
    root.attrs.update({"mmcache": {"version": 1, "part_size": part_size}, "groups": {"resnet152": {}}})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp(prefix="bench-store-")) / "s.zarr"
    build(path, args.videos, args.part_size, rng)
    store = FeatureStore(path)
    g = store.load_group("resnet152")
    keys = store.clips["key"]
    batches = [keys[rng.choice(len(keys), args.batch, replace=False)] for _ in range(args.batches)]
    store.read("resnet152", batches[0])  # warm the page cache: compare like with like

    def from_store():
        return sum(x.nbytes for b in batches for x in store.read("resnet152", b))

    def from_ram():
        n = 0
        for b in batches:
            for c in store.clip_index(b):
                v = store.clips["video"][c]
                rows = g.offsets[v + 1] - g.offsets[v]
                a = min(rows, int(np.floor(store.clips["start"][c])))
                e = min(rows, int(np.floor(store.clips["end"][c])) + 1)
                n += g.data[g.offsets[v] + a:g.offsets[v] + e].copy().nbytes
        return n

    def best_rate(fn, repeats=5):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            n_bytes = fn()
            best = min(best, time.perf_counter() - t)
        return args.batch * args.batches / best, n_bytes

    zarr_rate, n_bytes = best_rate(from_store)
    ram_rate, ram_bytes = best_rate(from_ram)
    assert n_bytes == ram_bytes, "both paths must read the same rows"
    print(f"store: {args.videos} videos, {len(keys)} clips, {g.data.shape[0]} rows x 2048 f16 "
          f"({g.data.nbytes / 1e6:.0f} MB), parts of {args.part_size} videos, uncompressed")
    print(f"batched random reads (batch {args.batch}, best of 5): {zarr_rate:9.0f} clips/s "
          f"({n_bytes / args.batches / args.batch / 1e3:.0f} kB/clip)")
    print(f"same rows from RAM (numpy slices):     {ram_rate:9.0f} clips/s")
    print(f"ratio store/RAM: {zarr_rate / ram_rate:.2f}")


if __name__ == "__main__":
    main()
