"""MCN trainer steps/s (batches streamed from the store by loader workers) against the bare
forward+backward of the same heads on one batch already in RAM.

The bare loop runs the same model, the same losses (MMS, clustering with its queue and k-means,
reconstruction) and the same optimiser on one pre-built batch; the trainer adds batch sampling, reading
and forming clips from the memory-mapped store, logging and checkpoints. Target ratio >= 0.8.
Also the loader alone: seconds to form one batch in one process (as a loader worker does, one thread), against
copying the bytes of the stored rows it pools within RAM, and how many loader workers keep pace with the bare step.
Usage: python benchmarks/train.py [--steps 60 --dim 1024 --device cpu]
(MCN's own sizes on a GPU: --device cuda --dim 6144 --videos 256 --videos-per-batch 128 --clips-per-video 32
--video-dim 4096; benchmarks/gpu.py runs exactly that.)
"""
import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import planted_store  # noqa: E402  (the planted synthetic store of the tests)

from trainers import data  # noqa: E402
from trainers.data import ClipReader  # noqa: E402
from trainers.run import autocast  # noqa: E402
from trainers.methods.mcn import Clusterer, MCNConfig, MCNSampler, build_model, clip_spec, losses_for  # noqa: E402
from trainers.train import train  # noqa: E402

WARM = 5


def trainer_rate(cfg: MCNConfig) -> tuple[float, float]:
    """Steps/s of `trainers mcn` after WARM steps (cfg.log_every must be 1), and the share of that time it
    waited for batches (its input_wait)."""
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    return (len(rows) - 1 - WARM) / (rows[-1]["time"] - rows[WARM]["time"]), float(np.mean(
        [r["input_wait"] for r in rows[WARM + 1:]]))


def bare_rate(cfg: MCNConfig, steps: int) -> float:
    """Steps/s of the same model, losses and optimiser on one batch formed once, already on the device
    (bf16 autocast on CUDA, as the trainer), with the trainer's clustering schedule: MCN re-initialises and refits
    k-means at each epoch's start, and an epoch of this small store is a few steps. (Until 2026-12-07 this loop
    never started an epoch, so at MCN's sizes, 2 steps an epoch, it ran a tenth of the trainer's k-means.)"""
    dev = cfg.device
    reader = ClipReader(cfg.store, clip_spec(cfg))
    sampler = MCNSampler(reader.usable_videos(), cfg.videos_per_batch, cfg.clips_per_video, cfg.seed)
    b = reader.batch(sampler(reader, 0))
    batch = (torch.from_numpy(b["video"]).to(dev), torch.from_numpy(b["audio"]).float().to(dev),
             reader.vectors[torch.from_numpy(b["words"])].to(dev), torch.from_numpy(b["nframes"]).to(dev))
    model = build_model(cfg, reader.video_dim, reader.vectors.shape[1]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    clusterers = {n: Clusterer(cfg.queue_steps * cfg.videos_per_batch * max(1, cfg.clips_per_video // 2), cfg.dim,
                               cfg.clusters, dev) for n in model.spaces}
    model.train()
    cuda = dev.startswith("cuda")
    for step in range(steps):
        if step == WARM:
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
        with autocast(dev):
            out = model(*batch)
        out = {k: ({m: e.float() for m, e in emb.items()}, [(p.float(), t_.float()) for p, t_ in rec])
               for k, (emb, rec) in out.items()}
        terms = losses_for(out, clusterers, cfg, step, sampler.steps_per_epoch, dev)
        loss = terms["mms"] + terms["cluster"] + terms["recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return (steps - WARM) / (time.perf_counter() - t)


def loader_rate(cfg: MCNConfig, batches: int = 4) -> tuple[float, float, float]:
    """(seconds per batch formed in this process with one torch thread, as in a loader worker; GB of stored
    rows it pools per batch; seconds to copy that many bytes within RAM)."""
    reader = ClipReader(cfg.store, clip_spec(cfg))
    sampler = MCNSampler(reader.usable_videos(), cfg.videos_per_batch, cfg.clips_per_video, cfg.seed)
    pooled, pool = [0], data._pool

    def counting(rows, a, b, op):  # the bytes of the rows each clip pools (what a batch must read)
        def read(lo, hi):
            x = rows(lo, hi)
            pooled[0] += int(np.clip(np.minimum(b, lo + len(x)) - np.maximum(a, lo), 0, None).sum()) * x[:1].nbytes
            return x
        return pool(read, a, b, op)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reader.batch(sampler(reader, 0))  # page cache warm, as after the trainer's first steps
        t = time.perf_counter()
        for step in range(1, batches + 1):
            reader.batch(sampler(reader, step))
        per_batch = (time.perf_counter() - t) / batches
        data._pool = counting
        reader.batch(sampler(reader, 1))
    finally:
        data._pool = pool
        torch.set_num_threads(threads)
    buf, dst = np.ones(1 << 26, np.uint8), np.empty(1 << 26, np.uint8)  # 64 MB, pages touched once
    np.copyto(dst, buf)
    t, left = time.perf_counter(), pooled[0]
    while left > 0:
        np.copyto(dst[:min(left, len(buf))], buf[:min(left, len(buf))])
        left -= len(buf)
    return per_batch, pooled[0] / 1e9, time.perf_counter() - t


def compare(dim: int, videos: int, videos_per_batch: int, clips_per_video: int, video_dim: int, steps: int,
            device: str, loader_workers: int) -> dict:
    """Build a planted store, then the trainer's and the bare loop's steps/s, printed and returned."""
    rng = np.random.default_rng(0)
    d = Path(tempfile.mkdtemp(prefix="bench-train-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)  # a benchmark leaves no GBs behind
    store = planted_store(d / "s.zarr", videos, 1, rng.normal(size=(48, 300)),
                          (rng.normal(size=(300, video_dim)) / 10, rng.normal(size=(300, 1024)) / 10),
                          clips_per_video=clips_per_video)
    cfg = MCNConfig(store=str(store), out=str(d / "run"), combo="va+all", dim=dim, videos_per_batch=videos_per_batch,
                    clips_per_video=clips_per_video, steps=steps, warmup=min(10, steps - 1), clusters=32,
                    cluster_every=20, queue_steps=4, checkpoint_every=10_000, log_every=1,
                    loader_workers=loader_workers, device=device)
    trainer, wait = trainer_rate(cfg)
    bare = bare_rate(cfg, steps)
    per_batch, gb, copy = loader_rate(cfg)
    spe = MCNSampler(ClipReader(cfg.store, clip_spec(cfg)).usable_videos(), videos_per_batch, clips_per_video,
                     cfg.seed).steps_per_epoch
    refits = sum(step % spe % cfg.cluster_every == 0 for step in range(WARM, steps))
    print(f"MCN va+all, dim {dim}, batch {videos_per_batch}x{clips_per_video} clips, video {video_dim}-d, clips "
          f"merged to {cfg.min_time:g} s, {torch.get_num_threads()} threads, {loader_workers} loader workers, {device}")
    print(f"both loops: an epoch is {spe} steps of this {videos}-video store; k-means refit (per space) at "
          f"{refits} of the {steps - WARM} timed steps")
    print(f"trainer (streamed from the store): {trainer:6.2f} steps/s, {wait:.0%} of it waiting for batches")
    print(f"bare forward+backward+step ({'GPU' if device != 'cpu' else 'RAM'}):  {bare:6.2f} steps/s")
    print(f"ratio: {trainer / bare:.2f}")
    print(f"loader alone: {per_batch:.3f} s to form a batch in one process ({gb:.2f} GB of stored rows pooled; "
          f"copying those bytes within RAM: {copy:.3f} s, {copy / per_batch:.2f} of it); the bare step's pace needs "
          f"{per_batch * bare:.1f} loader workers (ran with {loader_workers})")
    return {"trainer": trainer, "bare": bare, "loader_s": per_batch}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--videos-per-batch", type=int, default=32)
    ap.add_argument("--clips-per-video", type=int, default=4)
    ap.add_argument("--video-dim", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loader-workers", type=int, default=1)
    a = ap.parse_args()
    compare(a.dim, a.videos, a.videos_per_batch, a.clips_per_video, a.video_dim, a.steps, a.device, a.loader_workers)


if __name__ == "__main__":
    main()
