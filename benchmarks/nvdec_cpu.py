"""The CPU's share of `--decoder nvdec`, runnable without a GPU: NVDEC and the GPU's scaling are replaced by
stand-ins that cost nothing, so what is timed is what the CPU must do per video beside NVDEC (which frames:
demux and the first frame; the audio decode; the log-mel) through the part's decode machinery.

Three ways, the same videos (remuxes of the real encodes): the NVDEC sessions (threads of one process, as on a
GPU worker) preparing their own videos, as before 2026-12-07; the sessions fed by CPU processes that prepare
ahead (`pipeline/part.py`'s `_Ahead`, now); and the limit: the same work run serially on one core, times the
cores. Also the CPU the sessions' own process spends per video-second: that process (the GPU worker, one GIL)
bounds NVDEC extraction whatever NVDEC and the other cores can do (HowTo100M in 400 host-hours needs 335 video-s/s).
Usage: python benchmarks/nvdec_cpu.py [--videos 24 --seconds 30 --sessions 4 --processes 1 2 4]
"""
import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from extract import workload  # noqa: E402  (benchmarks/extract.py: the real encodes, remuxed)

import pipeline.decode_nvdec as nv
from features.base import LOGMEL, Options
from features.registry import extractor
from pipeline.part import DecodePlan, PartJob, _Ahead, _Decodes


class Instant:
    """PyNvVideoCodec at zero cost: the frame count known beforehand, frames of zeros."""

    counts: dict = {}

    class OutputColorType:
        RGB = "rgb"

    class SimpleDecoder:
        def __init__(self, path, **_):
            self.n, self.shape = Instant.counts[path]

        def __len__(self):
            return self.n

        def get_batch_frames_by_index(self, idx):
            return [torch.zeros(self.shape, dtype=torch.uint8) for _ in idx]


def scale_free(x, size):  # the GPU's scaling at zero cost
    width, height = size
    return [np.zeros((height, width, 3), np.uint8) for _ in range(len(x))]


def run(paths: list[str], sessions: int, processes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads) of the part's decode stage over ``paths``
    (frames at 1 fps, audio, log-mel)."""
    plan = DecodePlan(frames=True, clips=(), audio=True, mel=True, raw_audio=False,
                      opts=Options(decoder="nvdec"), at_once=sessions)
    job = PartJob(store="", part=0, videos=[(str(i), p) for i, p in enumerate(paths)], groups=[], opts=plan.opts)
    ahead = _Ahead(plan, paths, processes, 2 * processes) if processes else None
    t, cpu = time.perf_counter(), time.process_time()
    try:
        done = sum(1 for kind, *_ in _Decodes(job, plan, ahead) if kind == "done")
    finally:
        if ahead:
            ahead.close()
    assert done == len(paths)
    return time.perf_counter() - t, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--processes", type=int, nargs="+", default=None, help="CPU processes to try (default: sessions)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = Path(tempfile.mkdtemp(prefix="bench-nvcpu-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    paths = [str(p) for p in workload(d / "v", a.videos, a.seconds)]
    seconds = 0.0
    for p in paths:
        info, _ = nv.fps_picks(p, [1.0])
        Instant.counts[p] = (info["frames"], (info["coded"][1], info["coded"][0], 3))
    module = types.ModuleType("PyNvVideoCodec")
    module.OutputColorType, module.SimpleDecoder = Instant.OutputColorType, Instant.SimpleDecoder
    sys.modules["PyNvVideoCodec"] = module
    nv.scale_gpu = scale_free
    mel = extractor(LOGMEL, Options())
    t = time.perf_counter()
    for p in paths:  # the limit: the CPU's share of each video, serially on one core
        prep = nv.prepare(p, [1.0], True)
        mel(prep.decoded.audio)
        seconds += prep.decoded.duration
    one = time.perf_counter() - t
    cores = os.cpu_count() or 1
    print(f"{a.videos} videos, {seconds:.0f} video-s, {cores} cores, {a.sessions} NVDEC sessions (stand-ins: NVDEC "
          f"and the GPU's scaling cost nothing)")
    print(f"limit, the CPU's share serially on one core x {cores}: {seconds / one:7.1f} x {cores} = "
          f"{cores * seconds / one:7.1f} video-s/s")
    for name, processes in [("sessions prepare their own videos (threads)", 0)] + [
            (f"prepared ahead in {n} CPU processes", n) for n in a.processes or [a.sessions]]:
        run(paths[:2], a.sessions, processes)  # warm: the forkserver and its imports
        dt, cpu = min(run(paths, a.sessions, processes) for _ in range(2))
        print(f"{name:48s} {seconds / dt:7.1f} video-s/s = {seconds / dt / (cores * seconds / one):.2f} of the limit; "
              f"the sessions' process {1e3 * cpu / seconds:5.2f} ms CPU per video-s (alone on a core: at most "
              f"{seconds / cpu:6.0f} video-s/s)")


if __name__ == "__main__":
    main()
