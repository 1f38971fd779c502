"""Batched random clip reads from the store vs the same rows gathered from RAM.

Builds a HowTo100M-shaped store (ResNet-like float16 rows, 2048-d) with the project's writer API, then times
FeatureStore.read on random batches of clips against numpy slices of the same rows from the whole group
loaded in RAM. Usage: python benchmarks/store.py [--videos 1000]
"""
import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import build_store, write_inputs  # noqa: E402  (the tests' synthetic data, real writer API)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    d = Path(tempfile.mkdtemp(prefix="bench-store-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)  # a benchmark leaves no GBs behind
    manifest, captions = write_inputs(d, args.videos, captions_per_video=4, seconds=args.seconds)
    store = build_store(d / "s.zarr", manifest, captions, seconds=args.seconds, part_size=args.part_size)
    g = store.load_group("resnet152")
    batches = [rng.choice(store.n_clips, args.batch, replace=False) for _ in range(args.batches)]
    start, end = store.clip_rows("start", 0, store.n_clips), store.clip_rows("end", 0, store.n_clips)
    video = store.clip_video(np.arange(store.n_clips))
    store.read("resnet152", batches[0])  # warm the page cache: compare like with like

    def from_store():
        return sum(x.nbytes for b in batches for x in store.read("resnet152", b))

    def from_ram():
        n = 0
        for b in batches:
            for c in b:
                v = video[c]
                rows = g.offsets[v + 1] - g.offsets[v]
                a, e = min(rows, int(np.floor(start[c]))), min(rows, int(np.floor(end[c])) + 1)
                n += g.data[g.offsets[v] + a:g.offsets[v] + e].copy().nbytes
        return n

    def best_rate(fn, repeats=5):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            n_bytes = fn()
            best = min(best, time.perf_counter() - t)
        return args.batch * args.batches / best, n_bytes

    store_rate, n_bytes = best_rate(from_store)
    ram_rate, ram_bytes = best_rate(from_ram)
    assert n_bytes == ram_bytes, "both paths must read the same rows"
    print(f"store: {args.videos} videos, {store.n_clips} clips, {g.data.shape[0]} rows x 2048 f16 "
          f"({g.data.nbytes / 1e6:.0f} MB), parts of {args.part_size} videos, uncompressed")
    print(f"batched random reads (batch {args.batch}, best of 5): {store_rate:9.0f} clips/s "
          f"({n_bytes / args.batches / args.batch / 1e3:.0f} kB/clip)")
    print(f"same rows from RAM (numpy slices):     {ram_rate:9.0f} clips/s")
    print(f"ratio store/RAM: {store_rate / ram_rate:.2f}")


if __name__ == "__main__":
    main()
