"""Extraction in decode processes (the GPU host's layout) against the decode limit: what part boundaries and the
way a part's videos are shared among its decode processes cost, with a model that costs almost nothing.

On a GPU host one Dask worker runs the models and the host's cores decode for it in ``--decode-workers``
processes; at 1 fps the GPU waits for the decode (benchmarks/gpu.py: GPU 1% busy), so the pipeline's pace is the
decode processes' pace, and every moment a decode process has nothing to do is lost. This runs that layout on
any machine: `pipeline extract` with one worker and --decode-workers P, the frames group at a 32-pixel side (a
JPEG of 32 x 42 pixels per frame: the main process's model costs next to nothing) on videos of different lengths
and costs (the real encodes remuxed to lengths drawn as HowTo100M's are spread, log-normal), against:
- the decode limit: the same videos decoded (1 fps frames, audio) in P processes taking the next video as each
  finishes, in the order extraction takes them (largest file first).
Usage: python benchmarks/parts.py [--videos 16 --seconds 30 --part-size 4 --processes 2]
"""
import argparse
import atexit
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import REAL  # noqa: E402  (the real encodes)

from pipeline.decode import decode  # noqa: E402
from pipeline.demo import loop_video  # noqa: E402
from pipeline.extract import ExtractConfig, extract  # noqa: E402
from pipeline.part import _longest_first  # noqa: E402


def videos(folder: Path, n: int, seconds: float, seed: int = 0) -> list[Path]:
    """``n`` remuxes of the real videos, in turn, of log-normal lengths around ``seconds`` (sigma 0.8: HowTo100M's
    lengths spread from about a minute to half an hour around 6.5 minutes)."""
    import av

    folder.mkdir(parents=True)
    real = sorted(REAL.glob("*.mp4"))
    if not real:
        raise SystemExit(f"no real video in {REAL}")
    lengths = seconds * np.exp(np.random.default_rng(seed).normal(0, 0.8, n)) / np.exp(0.32)  # mean ~ seconds
    paths = []
    for i, length in enumerate(lengths):
        src, p = real[i % len(real)], folder / f"v{i}.mp4"
        with av.open(str(src)) as c:
            loop_video(src, p, max(1, round(length * av.time_base / c.duration)))
        paths.append(p)
    return paths


def _seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return c.duration / av.time_base


def _decoded_seconds(path: str) -> float:
    return decode(path).duration


def decode_limit(paths: list[Path], processes: int) -> tuple[float, float]:
    """(video-s/s of ``processes`` processes decoding every video, the next one as each finishes, longest first;
    total video-s)."""
    order = [str(paths[i]) for i in _longest_first([str(p) for p in paths])]
    with mp.get_context("forkserver").Pool(processes) as pool:
        pool.map(_decoded_seconds, order[:processes])  # the processes' imports, outside the timing
        t = time.perf_counter()
        total = sum(pool.imap_unordered(_decoded_seconds, order))
        return total / (time.perf_counter() - t), total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="mean length of a video")
    ap.add_argument("--part-size", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2, help="--decode-workers")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-parts-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    paths = videos(tmp / "videos", args.videos, args.seconds)
    (tmp / "m.csv").write_text("video_id\n" + "".join(f"v{i}\n" for i in range(args.videos)))
    limit, total = decode_limit(paths, args.processes)
    cfg = ExtractConfig(manifest=str(tmp / "m.csv"), store=str(tmp / "s.zarr"), groups=["frames"], jpeg_short_side=32,
                        jpeg_quality=50, workers=1, decode_workers=args.processes, part_size=args.part_size,
                        precision="fp32", progress=False)
    t = time.perf_counter()
    summary = extract(cfg)
    wall = time.perf_counter() - t
    inside = total / summary["task_seconds"]
    lengths = sorted(_seconds(p) for p in paths)
    print(f"{args.videos} real videos of {lengths[0]:.0f}..{lengths[-1]:.0f} s ({total:.0f} video-s), parts of "
          f"{args.part_size}, {args.processes} decode processes, one worker; model: 32-pixel JPEGs")
    print(f"decode limit, {args.processes} processes, next video as each finishes: {limit:8.1f} video-s/s")
    print(f"pipeline extract, with start-up:  {total / wall:8.1f} video-s/s = {total / wall / limit:.2f} of the limit")
    print(f"pipeline extract, while tasks ran:{inside:8.1f} video-s/s = {inside / limit:.2f} of the limit "
          f"({summary['parts_run']} parts, statuses {summary['status']})")


if __name__ == "__main__":
    main()
