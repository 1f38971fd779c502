"""Batched random clip reads from the store vs the same rows gathered from RAM.

Builds a HowTo100M-shaped store (ResNet-like float16 rows, 2048-d) with the project's writer API, then times
FeatureStore.read on random batches of clips against numpy slices of the same rows from the whole group
loaded in RAM. ``--s3``: the same reads from the store synced to an S3-protocol server on loopback (moto's
server mode, the [test] extra), cold (a newly opened store: every chunk fetched) and warm (the same store object
again: its chunks held), as ratios of the local read. Usage: python benchmarks/store.py [--videos 1000] [--s3]
"""
import argparse
import atexit
import os
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
    ap.add_argument("--s3", action="store_true", help="also read it from a loopback S3 server")
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
    if args.s3:
        s3_reads(d / "s.zarr", batches, store_rate, args)


def s3_reads(local: Path, batches, local_rate: float, args) -> None:
    from moto.server import ThreadedMotoServer
    import s3fs

    from pipeline.store import FeatureStore

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    t = time.perf_counter()
    fs.put(str(local), "bench/s.zarr", recursive=True)
    size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    print(f"synced to s3://bench/s.zarr on loopback: {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s")

    def reads(store):
        t = time.perf_counter()
        for b in batches:
            store.read("resnet152", b)
        return args.batch * args.batches / (time.perf_counter() - t)

    cold = max(reads(FeatureStore("s3://bench/s.zarr")) for _ in range(3))
    chunks = [f for f in fs.find("bench/s.zarr/parts") if "/resnet152/data/c/" in f]
    t = time.perf_counter()
    fetched = sum(len(v) for v in fs.cat(chunks).values())  # the server's own pace: every chunk of the group, once
    raw = time.perf_counter() - t
    store = FeatureStore("s3://bench/s.zarr")
    reads(store)
    warm = max(reads(store) for _ in range(3))
    print(f"from S3, cold (newly opened, every chunk fetched): {cold:9.0f} clips/s = {cold / local_rate:.3f} of the local read")
    print(f"from S3, warm (the same store again, chunks held):  {warm:9.0f} clips/s = {warm / local_rate:.2f} of the local read")
    cold_s = args.batch * args.batches / cold
    print(f"the group's {len(chunks)} chunk files fetched at once with s3fs ({fetched / 1e6:.0f} MB): {raw:.2f} s, "
          f"{fetched / raw / 1e6:.0f} MB/s; a cold pass of the reads above took {cold_s:.2f} s = "
          f"{raw / cold_s:.2f} of that pace (it fetches the chunks its batches touch, one array at a time)")
    server.stop()


if __name__ == "__main__":
    main()
