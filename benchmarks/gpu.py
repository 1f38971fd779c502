"""The GPU benchmark, one command on a CUDA machine: python benchmarks/gpu.py [--videos 64 --seconds 60]

1. Extraction with --device cuda (one Dask worker per GPU, the host's cores decoding in DataLoader processes,
   frames of several videos per forward) against its limit measured in the same run:
   min(decoding on every core at once, the bare GPU ResNet-152 forward in the GPU's fastest precision);
   the GPU's utilisation is sampled (nvidia-smi) while it runs. Where NVDEC is (PyNvVideoCodec), the same with
   --decoder nvdec, against NVDEC's own decode limit (NVDEC_SESSIONS videos at once). Each run's pace is
   extrapolated to host-hours for HowTo100M's 482 million video-seconds.
2. The MCN trainer against the bare forward+backward on the GPU at MCN's own sizes (D = 6144, 128 x 32 clips,
   4096-d video), via benchmarks/train.py.
Exits with a message where no CUDA device is visible. The videos are the real ones of ../shared/data/videos,
remuxed to --seconds each (benchmarks/extract.py's workload). ``--device cpu`` rehearses the same steps on the
CPU (no NVDEC, no nvidia-smi), small: a script broken here would otherwise waste a GPU lease
(tests/test_benchmarks.py runs it so).
"""
import argparse
import atexit
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import HOWTO100M_MEAN_SECONDS, HOWTO100M_VIDEO_SECONDS, at_scale, workload  # noqa: E402
from train import compare  # noqa: E402

from features.base import Options  # noqa: E402
from features.frames import ResNetFrames  # noqa: E402
from features.precision import resolve  # noqa: E402
from pipeline.decode import decode  # noqa: E402
from pipeline.decode_nvdec import decode_nvdec, unavailable  # noqa: E402
from pipeline.part import NVDEC_SESSIONS  # noqa: E402
from pipeline.extract import ExtractConfig, extract  # noqa: E402


def _decode_seconds(path: str) -> float:
    return decode(path).duration


def nvdec_limit(paths: list, sessions: int) -> float:
    """Video-s/s of NVDEC decoding the videos (frames picked and scaled as extraction does, audio on the CPU),
    ``sessions`` at once, the frames dropped."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path) -> float:
        return decode_nvdec(str(path), on_frames=lambda b: None).duration

    decode_nvdec(str(paths[0]), on_frames=lambda b: None)  # NVDEC's and CUDA's start-up, outside the timing
    t = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        total = sum(pool.map(one, paths))
    return total / (time.perf_counter() - t)


def hours(rate: float) -> str:
    return f"{HOWTO100M_VIDEO_SECONDS / rate / 3600:,.0f} host-hours for HowTo100M"


def gpu_forward(frames, precision: str, batch: int, device: str = "cuda", seconds: float = 5.0) -> float:
    """Frames per second of the bare ResNet-152 on the GPU (batches already on the device)."""
    enc = ResNetFrames("resnet152", Options(random_init=("resnet152",), precision=precision, device=device,
                                            batch_size=batch))
    x = torch.from_numpy(frames[:batch]).to(device).permute(0, 3, 1, 2).float().div_(255).contiguous(
        memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode(), enc.autocast():
        for _ in range(3):
            enc.model(x)
        sync()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            enc.model(x)
            n += len(x)
        sync()
    return n / (time.perf_counter() - t)


class Utilisation:
    """GPU utilisation (%) sampled every 0.5 s by nvidia-smi while the block runs."""

    def __init__(self):
        self.samples, self.stop = [], threading.Event()

    def __enter__(self):
        def loop():
            while not self.stop.wait(0.5):
                r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    self.samples.append(sum(map(float, r.stdout.split())) / max(1, len(r.stdout.split())))
        if shutil.which("nvidia-smi"):
            self.thread = threading.Thread(target=loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()

    def summary(self) -> str:
        if not self.samples:
            return "n/a (no nvidia-smi)"
        s = sorted(self.samples)
        return f"mean {sum(s) / len(s):.0f}%, median {s[len(s) // 2]:.0f}% over {len(s)} samples"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: a rehearsal of every step on the CPU (use small sizes)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device is visible (torch.cuda.is_available() is False)")
    cores, gpus = os.cpu_count() or 1, torch.cuda.device_count() if cuda else 1
    precision = resolve("auto", "cuda")[0] if cuda else "fp32"
    name = torch.cuda.get_device_name(0) if cuda else "CPU (a rehearsal: no GPU figure means anything)"
    print(f"{name} x {gpus}, {cores} CPU cores, torch {torch.__version__}, {precision}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # a benchmark leaves no GBs behind
    paths = workload(tmp / "videos", args.videos, args.seconds)
    (tmp / "m.csv").write_text("video_id\n" + "".join(f"v{i}\n" for i in range(args.videos)))

    t = time.perf_counter()
    with mp.get_context("spawn").Pool(cores) as pool:  # every core decoding its own videos, as extraction does
        total = sum(pool.map(_decode_seconds, [str(p) for p in paths]))
    decode_limit = total / (time.perf_counter() - t)
    frames = decode(str(paths[0]), audio=False).frames
    import numpy as np
    frames = np.stack((frames * (args.batch_size // len(frames) + 1))[:args.batch_size])
    forward = {p: gpu_forward(frames, p, args.batch_size, args.device, 5.0 if cuda else 1.0)
               for p in dict.fromkeys(["fp32", precision])}
    best = max(forward, key=forward.get)
    limit = min(decode_limit, forward[best])

    why = unavailable() if cuda else "a CPU rehearsal"
    nvdec = None if why else nvdec_limit(paths, NVDEC_SESSIONS)
    print(f"workload: {args.videos} real videos, {total:.0f} video-s")
    print(f"decode limit, {cores} processes at once:  {decode_limit:9.1f} video-s/s")
    print(f"NVDEC decode limit, {NVDEC_SESSIONS} sessions:      " + (f"{nvdec:9.1f} video-s/s" if nvdec else f"n/a: {why}"))
    for p, r in forward.items():
        print(f"bare GPU ResNet-152 forward, {p}:       {r:9.1f} frames/s = video-s/s (batch {args.batch_size})")
    for decoder, decoding in (("pyav", decode_limit), ("nvdec", nvdec)):
        if decoding is None:
            continue
        limit = min(decoding, forward[best])
        cfg = ExtractConfig(manifest=str(tmp / "m.csv"), store=str(tmp / f"{decoder}.zarr"),
                            groups=["resnet152", "logmel"], random_init=["resnet152"], device=args.device,
                            precision=best, batch_size=args.batch_size, part_size=max(4, args.videos // (2 * gpus)),
                            decoder=decoder, progress=False)
        with Utilisation() as util:
            t = time.perf_counter()
            summary = extract(cfg)
            wall = time.perf_counter() - t
        pipeline = total / wall
        inside = total / summary["task_seconds"]  # while any task ran
        print(f"--decoder {decoder}: limit = min(decode, {best} forward) = {limit:.1f} video-s/s")
        print(f"  {'pipeline extract --device ' + args.device + ':':39s}{pipeline:9.1f} video-s/s = "
              f"{pipeline / limit:.2f} of the limit, incl. start-up ({summary.get('decode_workers')} decode processes "
              f"per part); {hours(pipeline)}")
        print(f"  same, while its tasks ran:             {inside:9.1f} video-s/s = {inside / limit:.2f} of the limit; "
              f"{hours(inside)}")
        fixed, scaled = at_scale(total, wall, summary["task_seconds"])
        print(f"  start-up and shut-down (no task running): {fixed:.1f} s; with it, 1,000 videos of HowTo100M's mean "
              f"length ({HOWTO100M_MEAN_SECONDS:.0f} s): {scaled:.1f} video-s/s = {scaled / limit:.2f} of the limit "
              "(extrapolated, not measured)")
        print(f"  GPU utilisation during extraction:     {util.summary()}")
        print(f"  statuses: {summary['status']}; NVDEC's videos taken by the CPU: "
              f"{summary.get('nvdec_cpu_fallback', 0)}")
    if not args.skip_train:
        mcn = dict(dim=6144, videos=256, videos_per_batch=128, clips_per_video=32, video_dim=4096) if cuda else \
            dict(dim=128, videos=32, videos_per_batch=8, clips_per_video=4, video_dim=256)  # MCN's sizes; rehearsal
        compare(**mcn, steps=args.train_steps, device=args.device, loader_workers=min(4, max(1, cores - 2)))


if __name__ == "__main__":
    main()
