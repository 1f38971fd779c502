"""MCN trainer steps/s (batches streamed from the store by loader workers) against the bare
forward+backward of the same heads on one batch already in RAM.

The bare loop runs the same model, the same losses (MMS, clustering with its queue and k-means,
reconstruction) and the same optimiser on one pre-built batch; the trainer adds batch sampling, reading
and forming clips from the memory-mapped store, logging and checkpoints. Target ratio >= 0.8.
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
    (bf16 autocast on CUDA, as the trainer)."""
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
        terms = losses_for(out, clusterers, cfg, step, 10**9, dev)
        loss = terms["mms"] + terms["cluster"] + terms["recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return (steps - WARM) / (time.perf_counter() - t)


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
                    clips_per_video=clips_per_video, steps=steps, warmup=min(10, steps - 1), min_time=0.0, clusters=32,
                    cluster_every=20, queue_steps=4, checkpoint_every=10_000, log_every=1,
                    loader_workers=loader_workers, device=device)
    trainer, wait = trainer_rate(cfg)
    bare = bare_rate(cfg, steps)
    print(f"MCN va+all, dim {dim}, batch {videos_per_batch}x{clips_per_video} clips, video {video_dim}-d, "
          f"{torch.get_num_threads()} threads, {loader_workers} loader workers, {device}")
    print(f"trainer (streamed from the store): {trainer:6.2f} steps/s, {wait:.0%} of it waiting for batches")
    print(f"bare forward+backward+step ({'GPU' if device != 'cpu' else 'RAM'}):  {bare:6.2f} steps/s")
    print(f"ratio: {trainer / bare:.2f}")
    return {"trainer": trainer, "bare": bare}


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
