"""Extraction on the CPU against its physical limits and against the HowTo100M extractor, in one run.

Workload: the real YouTube encodes of ../shared/data/videos remuxed (not re-encoded) to --seconds each (a keyframe
every 2-3 s, Constrained Baseline, as HowTo100M's 360p downloads); ResNet-152 (random weights: the speed is the
weights') + log-mel. Every figure is video-seconds per second (= 1 fps frames per second) on all of this machine's
cores unless said.

1. Decode only (frames + 16 kHz audio), one video at a time, on 30 s 480x360 videos: mmcache's single pass with
   the decoder's threads at the core count, against the peer's two ffmpeg CLI passes at the CLI's default threads;
   and the decode limit: one video per core in parallel processes.
2. The bare ResNet-152 forward at each precision, thread count and batch; the forward limit: the best of one
   process on every core and one 1-thread process per core.
3. `pipeline extract` with its default flags (every core), wall time including the Dask cluster and model start,
   and time inside its tasks; and in one process (`--workers 0`).
4. The peer at equal cores, the HowTo100M extractor's way: a DataLoader with its 4 decoding workers
   (--num_decoding_thread) each running the two ffmpeg CLI passes per video, the model in the main process on every
   core at its batch of 64, fp32 and bf16 autocast (its --half_precision on a CPU).
5. Ratios: extraction / the peer; extraction / min(decode limit, forward limit); and / the shared-core limit
   1 / (1/decode + 1/forward), what decoding and the forward cost together when they share the cores.
Usage: python benchmarks/extract.py [--videos 8 --seconds 120]
"""
import argparse
import atexit
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch

from features.audio import logmel
from features.base import Options
from features.frames import ResNetFrames
from features.precision import cpu_flags, cpu_name, native_bf16
from pipeline.decode import decode
from pipeline.demo import loop_video
from pipeline.extract import ExtractConfig, extract

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
CORES = os.cpu_count() or 1


def workload(folder: Path, videos: int, seconds: float, size: tuple[int, int] | None = None) -> list[Path]:
    """``videos`` remuxes of the real videos (of that size only, if given), each about ``seconds`` long."""
    folder.mkdir(parents=True)
    real = [p for p in sorted(REAL.glob("*.mp4"))
            if size is None or (lambda s: (s.width, s.height))(av.open(str(p)).streams.video[0]) == size]
    if not real:
        raise SystemExit(f"no real video{f' of {size}' if size else ''} in {REAL}")
    paths = []
    for i in range(videos):
        src, p = real[i % len(real)], folder / f"v{i}.mp4"
        with av.open(str(src)) as c:
            loop_video(src, p, max(1, round(seconds * av.time_base / c.duration)))
        paths.append(p)
    return paths


def peer_decode(path: str, short_side: int = 224, threads: int = 0):
    """The HowTo100M extractor's decode: ffprobe's size, then an ffmpeg CLI pass for the 1 fps frames (fps, scale,
    rawvideo pipe, read whole), and a second for the 16 kHz audio. ``threads`` 0: the CLI's default (every core).
    (imageio-ffmpeg ships no ffprobe: the size comes from PyAV's header read, well under a millisecond.)"""
    import ffmpeg

    from pipeline.decode import _scaled_size
    from pipeline.decode_ffmpeg import _probe, ffmpeg_exe

    exe = ffmpeg_exe()
    w, h = _scaled_size(*_probe(path)["size"], short_side)
    raw, _ = (ffmpeg.input(path, threads=threads).filter("fps", fps=1).filter("scale", w, h)
              .output("pipe:", format="rawvideo", pix_fmt="rgb24").global_args("-filter_threads", str(threads))
              .run(cmd=exe, capture_stdout=True, quiet=True))
    pcm, _ = (ffmpeg.input(path, threads=threads).output("pipe:", format="f32le", ac=1, ar=16000)
              .run(cmd=exe, capture_stdout=True, quiet=True))
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3), np.frombuffer(pcm, np.float32).copy()


def rate(paths, seconds: float, fn, repeats: int = 3) -> float:
    """video-s/s of ``fn`` over every path, one after another, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            fn(str(p))
        best = min(best, time.perf_counter() - t)
    return seconds / best


def _decode_one_thread(path: str) -> None:
    decode(path, threads=1)


def decode_section(tmp: Path) -> float:
    paths = workload(tmp / "decode", 4, 30.0, size=(480, 360))
    seconds = sum(decode(str(p), frames=False).duration for p in paths)
    ours = {t: rate(paths, seconds, lambda p, t=t: decode(p, threads=t)) for t in sorted({1, CORES})}
    peer = {t: rate(paths, seconds, lambda p, t=t: peer_decode(p, threads=t)) for t in (1, 0)}
    with mp.get_context("spawn").Pool(CORES) as pool:  # one video per core at a time: the pool's wall time
        pool.map(_decode_one_thread, [str(paths[0])] * CORES)  # imports and first open out of the timing
        t = time.perf_counter()
        pool.map(_decode_one_thread, [str(p) for p in paths] * CORES)
        limit = seconds * CORES / (time.perf_counter() - t)
    print(f"1. decode only, {len(paths)} real 480x360 videos of 30 s, frames + audio, one video at a time:")
    for t, r in ours.items():
        print(f"   mmcache, {t} decoder thread{'s' if t > 1 else ''}:          {r:7.1f} video-s/s")
    print(f"   peer ffmpeg CLI, 1 thread:             {peer[1]:7.1f}")
    print(f"   peer ffmpeg CLI, its default threads:  {peer[0]:7.1f}")
    print(f"   mmcache ({CORES} threads) / peer (default threads): {ours[CORES] / peer[0]:.2f}x  (target >= 1.3x); "
          f"at 1 thread each: {ours[1] / peer[1]:.2f}x")
    print(f"   decode limit, one video per core in {CORES} processes: {limit:7.1f} video-s/s")
    return limit


def _forward_rate(precision: str, threads: int, batch: int, frames: np.ndarray, seconds: float = 6.0) -> float:
    """frames/s of one process running ResNet-152 on these frames, after a warm-up forward of the same shape."""
    torch.set_num_threads(threads)
    enc = ResNetFrames("resnet152", Options(random_init=("resnet152",), precision=precision, batch_size=batch))
    enc(frames[:batch])
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        enc(frames[:batch])
        n += batch
    return n / (time.perf_counter() - t)


def forward_section(frames: np.ndarray) -> tuple[float, str]:
    precisions = ["fp32"] + (["bf16"] if native_bf16() else [])
    rates = {}
    print(f"2. bare ResNet-152 forward on the workload's frames ({frames.shape[1]}x{frames.shape[2]}), frames/s:")
    for p in precisions:
        for threads in sorted({1, CORES}):
            row = {b: _forward_rate(p, threads, b, frames) for b in (8, 32)}
            rates.update({(p, threads, b): r for b, r in row.items()})
            print(f"   {p}, {threads} thread{'s' if threads > 1 else ' '}: " + ", ".join(f"batch {b}: {r:6.2f}"
                                                                                     for b, r in row.items()))
    p, _, b = max(rates, key=rates.get)
    parallel = rates[(p, CORES, b)]
    if CORES > 1:
        with mp.get_context("spawn").Pool(CORES) as pool:
            parallel = max(parallel, sum(pool.starmap(_forward_rate, [(p, 1, b, frames)] * CORES)))
    print(f"   forward limit ({p}, batch {b}): {parallel:6.2f} frames/s on {CORES} cores "
          f"(the best of one process on every core and one 1-thread process per core)")
    return parallel, p


class _PeerVideos(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = [str(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return peer_decode(self.paths[i])


def peer_extract(paths, precision: str, workers: int = 4, batch: int = 64) -> float:
    """Seconds for the HowTo100M way: DataLoader decode workers, the model on every core in this process."""
    torch.set_num_threads(CORES)
    warnings.filterwarnings("ignore", category=UserWarning)  # its 4 decoders on 2 cores, read-only pipe buffers
    t = time.perf_counter()
    enc = ResNetFrames("resnet152", Options(random_init=("resnet152",), precision=precision, batch_size=batch))
    loader = torch.utils.data.DataLoader(_PeerVideos(paths), batch_size=None, num_workers=workers,
                                         multiprocessing_context="fork")
    for frames, audio in loader:
        enc(frames.numpy())
        logmel(audio.numpy())
    return time.perf_counter() - t


HOWTO100M_VIDEO_SECONDS = 482e6  # about 134,000 video-hours
HOWTO100M_MEAN_SECONDS = HOWTO100M_VIDEO_SECONDS / 1.22e6  # in 1.22 million videos: 395 s a video


def at_scale(seconds: float, wall: float, task_seconds: float, videos: int = 1000) -> tuple[float, float]:
    """(start-up and shut-down seconds: the wall time in which no task ran; the video-s/s a run of ``videos``
    videos of HowTo100M's mean length would make at this run's pace inside its tasks plus that fixed cost): an
    extrapolation, printed as one, for runs far larger than a benchmark's."""
    fixed, work = max(0.0, wall - task_seconds), videos * HOWTO100M_MEAN_SECONDS
    return fixed, work / (fixed + work * task_seconds / seconds)


def pipeline_rate(tmp: Path, seconds: float, name: str, **flags) -> tuple[float, float, dict]:
    """video-s/s of `pipeline extract` (default flags but these): wall time, and while its tasks ran."""
    cfg = ExtractConfig(manifest=str(tmp / "videos" / "m.csv"), store=str(tmp / f"{name}.zarr"), groups=["resnet152", "logmel"],
                        random_init=["resnet152"], progress=False)
    t = time.perf_counter()
    summary = extract(replace(cfg, **flags))
    wall = time.perf_counter() - t
    return seconds / wall, seconds / summary["task_seconds"], summary  # task_seconds: while any task ran


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of each video of sections 2-5")
    args = ap.parse_args()
    logging.getLogger("mmcache").setLevel(logging.ERROR)  # the manifest has no captions: said once here
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # a benchmark leaves no GBs behind
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    print(f"{cpu_name()}, {CORES} cores, flags {' '.join(flags)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    decode_limit = decode_section(tmp)

    paths = workload(tmp / "videos", args.videos, args.seconds)
    (tmp / "videos" / "m.csv").write_text("video_id\n" + "".join(f"v{i}\n" for i in range(args.videos)))
    seconds = sum(decode(str(p), frames=False).duration for p in paths)
    frames = np.stack(decode(str(paths[0]), audio=False).frames[:64])
    forward_limit, best = forward_section(frames)

    print(f"3. pipeline extract, {args.videos} videos, {seconds:.0f} video-s, ResNet-152 + log-mel:")
    default, default_tasks, summary = pipeline_rate(tmp, seconds, "default")
    why = summary["precision_why"]
    print(f"   default flags ({CORES} workers): {default:6.2f} video-s/s with start-up, {default_tasks:6.2f} inside its "
          f"tasks; precision {summary['precision']}, batch {summary['batch_size']} ({why.get('source')}"
          f"{'; probe ' + str(why['frames_per_s']) if 'frames_per_s' in why else ''})")
    inproc, inproc_tasks, _ = pipeline_rate(tmp, seconds, "inproc", workers=0)
    print(f"   --workers 0 (one process, {CORES} threads): {inproc:6.2f} video-s/s with start-up")

    print(f"4. the peer at equal cores ({CORES} threads, 4 DataLoader decoders, batch 64):")
    peer = {}
    for p in ["fp32"] + (["bf16"] if native_bf16() else []):
        peer[p] = seconds / peer_extract(paths, p)
        print(f"   {p}: {peer[p]:6.2f} video-s/s")
    best_peer = max(peer, key=peer.get)

    limit = min(decode_limit, forward_limit)
    shared = 1 / (1 / decode_limit + 1 / forward_limit)
    print("5. ratios (default flags, wall time with start-up):")
    print(f"   mmcache / peer at its best ({best_peer}): {default / peer[best_peer]:.2f}x  (target >= 1.1x); "
          f"/ peer fp32: {default / peer['fp32']:.2f}x")
    print(f"   mmcache / min(decode limit {decode_limit:.1f}, forward limit {forward_limit:.1f}): {default / limit:.2f} "
          f"(inside tasks {default_tasks / limit:.2f}; target >= 0.9)")
    print(f"   mmcache / shared-core limit {shared:.1f}: {default / shared:.2f} (inside tasks {default_tasks / shared:.2f})")
    fixed, scaled = at_scale(seconds, seconds / default, summary["task_seconds"])
    print(f"   start-up and shut-down {fixed:.1f} s (no task running); with that cost, 1,000 videos of HowTo100M's mean "
          f"length ({HOWTO100M_MEAN_SECONDS:.0f} s) at this pace: {scaled:.2f} video-s/s = {scaled / limit:.2f} of "
          "the limit (extrapolated)")


if __name__ == "__main__":
    main()
