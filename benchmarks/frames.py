"""Cached frames (the frames group, JPEG): bytes per video-second, and reading them back against decoding the
video again, measured in the same run on the same videos.

Writing: `pipeline extract --groups frames` (in-process, 1 thread) against its limit, decoding the 1 fps
frames alone. Size: bytes per video-second at a few qualities and sizes, beside a ResNet-152 feature row
(float16) and the raw frames. Reading (1 thread): every stored frame read from the store and JPEG-decoded
(full size), and as the end-to-end video loader forms it (short side 128, centre 112 crop), against decoding
the videos again (1 fps frames, no audio) and against the physical limit of the read itself: copying the
same bytes in RAM.
Usage: python benchmarks/frames.py [--videos 6 --seconds 60]
"""
import argparse
import atexit
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from extract import workload  # noqa: E402  (benchmarks/extract.py: the real encodes, remuxed)
from PIL import Image

from pipeline.decode import decode
from pipeline.extract import ExtractConfig, extract
from pipeline.store import FeatureStore
from trainers.clips import ClipSpec, frame_crops


def store_bytes(store: FeatureStore) -> int:
    return sum(store.unit(p, "frames").bytes.shape[0] for p in range(store.n_parts))


def read_all(store: FeatureStore, fn) -> int:
    n = 0
    for v in range(store.n_videos):
        files = store.video_files("frames", v)
        fn(files)
        n += len(files)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each video")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # a benchmark leaves no GBs behind
    paths = workload(tmp / "videos", args.videos, args.seconds)
    (tmp / "m.csv").write_text("video_id\n" + "".join(f"v{i}\n" for i in range(args.videos)))

    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        decoded = [decode(str(p), audio=False).frames for p in paths]  # 1 frame per video-second
        best = min(best, time.perf_counter() - t)
    frames = sum(len(f) for f in decoded)
    raw = sum(f.nbytes for fs in decoded for f in fs) / frames
    decode_rate = frames / best
    print(f"{os.cpu_count()} cores; {args.videos} real videos, {frames} video-s (1 frame per s, short side 224)")
    print(f"decode alone (1 thread, frames only):    {decode_rate:8.1f} frames/s = video-s/s")

    sizes = {}
    for side, quality in ((0, 90), (0, 75), (128, 85)):
        cfg = ExtractConfig(manifest=str(tmp / "m.csv"), store=str(tmp / f"s{side}_{quality}.zarr"), groups=["frames"],
                            workers=0, part_size=2, jpeg_short_side=side, jpeg_quality=quality, progress=False)
        t = time.perf_counter()
        extract(cfg)
        wall = time.perf_counter() - t
        store = FeatureStore(cfg.store)
        label = f"short side {side or 224}, quality {quality}"
        sizes[label] = store_bytes(store) / frames
        if (side, quality) == (0, 90):
            main_store = store
            print(f"pipeline extract --groups frames ({label}, in-process, 1 thread, planning included): "
                  f"{frames / wall:8.1f} video-s/s = {frames / wall / decode_rate:.2f} of decode alone")
    print("bytes per video-second:")
    for label, b in sizes.items():
        print(f"  frames, {label:28s} {b / 1e3:8.1f} kB  -> HowTo100M's 134k hours: {b * 134e3 * 3600 / 1e12:6.1f} TB")
    print(f"  a ResNet-152 feature row (float16)     {2048 * 2 / 1e3:8.1f} kB")
    print(f"  the raw RGB frames (as decoded)        {raw / 1e3:8.1f} kB")

    total = store_bytes(main_store)
    t = time.perf_counter()
    read_all(main_store, lambda files: [f.copy() for f in files])
    copy = total / (time.perf_counter() - t)
    t = time.perf_counter()
    read_all(main_store, lambda files: [np.asarray(Image.open(io.BytesIO(f.tobytes())).convert("RGB")) for f in files])
    full = frames / (time.perf_counter() - t)
    spec = ClipSpec(video_frames=1 << 30, frame_size=128, crop_size=112)
    t = time.perf_counter()
    read_all(main_store, lambda files: frame_crops(files, spec, None))
    loader = frames / (time.perf_counter() - t)
    print(f"reading back ({total / 1e6:.1f} MB of JPEG, 1 thread):")
    print(f"  the same bytes copied in RAM (limit):  {copy / 1e9:8.2f} GB/s = {copy / (total / frames):10.0f} frames/s")
    print(f"  read + JPEG decode, full size:         {full:8.1f} frames/s = {full / decode_rate:.1f}x decoding the "
          "video again")
    print(f"  as the loader forms them (128, crop 112): {loader:5.1f} frames/s = {loader / decode_rate:.1f}x decoding "
          "the video again")


if __name__ == "__main__":
    main()
