"""Pieces shared by the pseudo-label trainers (XDC, SeLaVi): the clip features they cluster, encoders over
them, a whole-set feature pass, and the export of pseudo-labels with their metrics against the store's
label columns."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import ClipReader, ClipSpec
from .metrics import clustering_metrics


@dataclass
class ClipFeatures:
    """Pooled video and audio features of every usable clip, in RAM (N x (Dv + Da) float32)."""
    video: torch.Tensor
    audio: torch.Tensor
    keys: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)


def load_features(store: str, batch: int = 4096) -> ClipFeatures:
    """Every clip with video and audio (caption time span, no merging), read from the store in batches."""
    reader = ClipReader(store, ClipSpec("va", min_time=0.0))
    clips = reader.all_clips()
    video, audio = [], []
    for _, b in reader.iter_batches(clips, batch):
        video.append(b["video"])
        audio.append(b["audio"])
    dims = ((0, reader.video_dim), (0, reader.audio_dim))
    return ClipFeatures(*(torch.from_numpy(np.concatenate(x) if x else np.zeros(d, np.float32))
                          for x, d in zip((video, audio), dims)),
                        reader.store.clip_keys(clips), reader.store.labels(clips))


def encoder(d_in: int, d_out: int = 512, hidden: int = 512) -> nn.Sequential:
    """Small trainable encoder on a cached clip feature (stands in for R(2+1)D / ResNet on raw input)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out), nn.BatchNorm1d(d_out))


@torch.no_grad()
def all_features(encoders: nn.ModuleDict, data: ClipFeatures, batch: int = 4096) -> dict[str, torch.Tensor]:
    """Encoder outputs for every clip, eval mode (no augmentation), keyed 'v' / 'a'."""
    was = encoders.training
    encoders.eval()
    out = {m: torch.cat([enc(x[i:i + batch]) for i in range(0, len(x), batch)])
           for m, enc, x in (("v", encoders["v"], data.video), ("a", encoders["a"], data.audio))}
    encoders.train(was)
    return out


def export_labels(run: Path, data: ClipFeatures, labels: dict[str, np.ndarray], best_of: str | None = None) -> dict:
    """Write <run>/labels.csv and labels.zarr (one column per labelling) and score each labelling against
    every label column of the store. ``best_of``: prefix of the labellings to pick the best (oracle) from."""
    from pipeline.store import write_unit

    names = sorted(labels)
    with open(run / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", *names])
        w.writerows([k, *(int(labels[n][i]) for n in names)] for i, k in enumerate(data.keys))
    write_unit(run / "labels.zarr", {"key": np.asarray(data.keys, dtype=object),
                                     **{n: np.asarray(labels[n], dtype=np.int32) for n in names}}, {},
               replace=True)
    results: dict = {"clips": len(data), "labellings": names, "metrics": {}}
    for column, truth in data.labels.items():
        if not 1 < len(np.unique(truth)) < len(truth):
            continue
        scores = {n: clustering_metrics(truth, labels[n]) for n in names}
        results["metrics"][column] = scores
        if best_of:
            heads = [n for n in names if n.startswith(best_of)]
            best = max(heads, key=lambda n: scores[n]["NMI"])
            results.setdefault("best_head", {})[column] = {"head": best, **scores[best],
                                                           "note": "picked by NMI to the labels (oracle)"}
            results.setdefault("mean_over_heads", {})[column] = {
                m: float(np.mean([scores[n][m] for n in heads])) for m in scores[best]}
    (run / "results.json").write_text(json.dumps(results, indent=1))
    return results


def table(results: dict) -> str:
    """Readable lines for export_labels' results."""
    lines = []
    for column, scores in results.get("metrics", {}).items():
        for name, m in scores.items():
            lines.append(f"  {column:12s} {name:14s} NMI {m['NMI']:.3f}  ARI {m['ARI']:.3f}  "
                         f"acc {m['accuracy']:.3f}  purity {m['purity']:.3f}")
        if column in results.get("best_head", {}):
            b = results["best_head"][column]
            lines.append(f"  {column:12s} best head: {b['head']} (NMI {b['NMI']:.3f}; picked with the labels)")
    return "\n".join(lines) or "  (no label column with 2+ values to score against)"
