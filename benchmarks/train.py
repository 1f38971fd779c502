"""MCN trainer steps/s (batches streamed from the store by loader workers) against the bare
forward+backward of the same heads on one batch already in RAM.

The bare loop runs the same model, the same losses (MMS, clustering with its queue and k-means,
reconstruction) and the same optimiser on one pre-built batch; the trainer adds batch sampling, reading
and forming clips from the memory-mapped store, logging and checkpoints. Target ratio >= 0.8.
Usage: python benchmarks/train.py [--steps 60 --dim 1024]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import planted_store  # noqa: E402  (the planted synthetic store of the tests)

from trainers.data import ClipReader  # noqa: E402
from trainers.mcn import Clusterer, MCNConfig, MCNSampler, build_model, clip_spec, losses_for, train  # noqa: E402

WARM = 5


def trainer_rate(cfg: MCNConfig) -> float:
    """Steps/s of `trainers mcn` after WARM steps (cfg.log_every must be 1)."""
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    return (len(rows) - 1 - WARM) / (rows[-1]["time"] - rows[WARM]["time"])


def bare_rate(cfg: MCNConfig, steps: int) -> float:
    """Steps/s of the same model, losses and optimiser on one batch formed once, in RAM."""
    reader = ClipReader(cfg.store, clip_spec(cfg))
    sampler = MCNSampler(reader.usable_videos(), cfg.videos_per_batch, cfg.clips_per_video, cfg.seed)
    b = reader.batch(sampler(reader, 0))
    batch = (torch.from_numpy(b["video"]), torch.from_numpy(b["audio"]).float(),
             reader.vectors[torch.from_numpy(b["words"])], torch.from_numpy(b["nframes"]))
    model = build_model(cfg, reader.video_dim, reader.vectors.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    clusterers = {n: Clusterer(cfg.queue_steps * cfg.videos_per_batch * max(1, cfg.clips_per_video // 2), cfg.dim,
                               cfg.clusters) for n in model.spaces}
    model.train()
    for step in range(steps):
        if step == WARM:
            t = time.perf_counter()
        terms = losses_for(model(*batch), clusterers, cfg, step, 10**9, "cpu")
        loss = terms["mms"] + terms["cluster"] + terms["recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (steps - WARM) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--loader-workers", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    d = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = planted_store(d / "s.zarr", args.videos, 1, rng.normal(size=(48, 300)),
                          (rng.normal(size=(300, 2048)) / 10, rng.normal(size=(300, 1024)) / 10))
    cfg = MCNConfig(store=str(store), out=str(d / "run"), combo="va+all", dim=args.dim, videos_per_batch=32,
                    clips_per_video=4, steps=args.steps, warmup=10, min_time=0.0, clusters=32, cluster_every=20,
                    queue_steps=4, checkpoint_every=10_000, log_every=1, loader_workers=args.loader_workers)
    trainer = trainer_rate(cfg)
    bare = bare_rate(cfg, args.steps)
    print(f"MCN va+all, dim {args.dim}, batch {cfg.videos_per_batch}x{cfg.clips_per_video} clips, "
          f"{torch.get_num_threads()} threads, {args.loader_workers} loader workers, CPU")
    print(f"trainer (streamed from the store): {trainer:6.2f} steps/s")
    print(f"bare forward+backward+step (RAM):  {bare:6.2f} steps/s")
    print(f"ratio: {trainer / bare:.2f}")


if __name__ == "__main__":
    main()
