"""MCN trainer steps/s against the bare forward+backward of the same heads on in-RAM tensors.

The bare loop runs the same model, the same losses (MMS, clustering with its queue and k-means,
reconstruction) and the same optimiser on one pre-built batch; the trainer adds batch sampling,
the gather from the cached clip tensors, logging and checkpoints. Target ratio >= 0.8.
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

from trainers.data import load_clips  # noqa: E402
from trainers.mcn import Clusterer, MCNConfig, build_model, losses_for, modalities_of, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--videos", type=int, default=128)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    d = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = planted_store(d / "s.zarr", args.videos, 1, rng.normal(size=(48, 300)),
                          (rng.normal(size=(300, 2048)) / 10, rng.normal(size=(300, 1024)) / 10))
    cfg = MCNConfig(store=str(store), out=str(d / "run"), combo="va+all", dim=args.dim, videos_per_batch=32,
                    clips_per_video=4, steps=args.steps, warmup=10, min_time=0.0, clusters=32, cluster_every=20,
                    queue_steps=4, checkpoint_every=10_000, log_every=1)
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = 5
    trainer_rate = (len(rows) - 1 - warm) / (rows[-1]["time"] - rows[warm]["time"])

    data = load_clips(str(store), modalities_of(cfg.combo), cfg.min_time)
    model = build_model(cfg, data.video.shape[1], data.vectors.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    clusterers = {n: Clusterer(cfg.queue_steps * cfg.videos_per_batch * cfg.clips_per_video // 2, cfg.dim,
                               cfg.clusters) for n in model.spaces}
    batch = data.batch(np.arange(cfg.videos_per_batch * cfg.clips_per_video))
    model.train()
    for step in range(args.steps):
        if step == warm:
            t = time.perf_counter()
        terms = losses_for(model(*batch), clusterers, cfg, step, 10**9, "cpu")
        loss = terms["mms"] + terms["cluster"] + terms["recon"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    bare_rate = (args.steps - warm) / (time.perf_counter() - t)
    print(f"MCN va+all, dim {args.dim}, batch {cfg.videos_per_batch}x{cfg.clips_per_video} clips, "
          f"{torch.get_num_threads()} threads, CPU")
    print(f"trainer:                    {trainer_rate:6.2f} steps/s")
    print(f"bare forward+backward+step: {bare_rate:6.2f} steps/s")
    print(f"ratio: {trainer_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
