"""Pieces shared by the pseudo-label trainers (XDC, SeLaVi): the clip features they cluster, encoders over
them, a whole-set feature pass, and the export of pseudo-labels with their metrics against the store's
label columns."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .clips import FRAMES_GROUP, ClipSpec, check_augment, video_groups
from .data import ClipReader
from .loader import step_loader
from .method import Method
from .metrics import clustering_metrics
from .run import autocast
from .towers import VideoTower, audio_head, encode_audio


def clip_spec(cfg) -> ClipSpec:
    """What a pseudo-label trainer (XDC, SeLaVi config) reads of a clip: its video and audio at its caption's
    span, in training and evaluation alike (augmentations are drawn only by the training loader)."""
    check_augment(cfg.augment)
    return ClipSpec("va", min_time=0.0, end_to_end_audio=cfg.end_to_end_audio, audio_group=cfg.audio_group,
                    audio_frames=cfg.audio_frames,
                    video_groups=video_groups(cfg.video_groups), audio_gain_db=getattr(cfg, "audio_gain_db", 0.0),
                    frames_group=FRAMES_GROUP if cfg.end_to_end_video else "", video_frames=cfg.video_frames,
                    frame_size=cfg.frame_size, crop_size=cfg.crop_size, augment=cfg.augment)


class ClipSet:
    """The clips a pseudo-label trainer works on (every clip with video and audio, at its caption's span),
    addressed by position 0..N-1. Only the clip indices are in RAM; features are read per chunk."""

    def __init__(self, cfg):
        self.store_path, self.spec = str(cfg.store), clip_spec(cfg)
        self.video_tower = (cfg.end_to_end_video, cfg.video_weights)
        self.reader = ClipReader(cfg.store, self.spec)
        self.reader.require_usable("clip with both video and audio")
        self.clips = self.reader.all_clips()
        self.video_dim, self.audio_dim = self.reader.video_dim, self.reader.audio_dim

    def encoders(self, feat_dim: int) -> nn.ModuleDict:
        return encoders(self.video_dim, self.audio_dim, feat_dim, self.spec.end_to_end_audio, *self.video_tower)

    def __len__(self) -> int:
        return len(self.clips)

    def chunks(self, positions: np.ndarray | None = None, size: int = 4096, rng: np.random.Generator | None = None):
        """(positions, batch as tensors) over ``positions`` (default: all), ``size`` at a time; ``rng``: draw
        the training augmentations (default: none, centre crops)."""
        positions = np.arange(len(self)) if positions is None else positions
        for i in range(0, len(positions), size):
            pos = positions[i:i + size]
            yield pos, {k: torch.from_numpy(v) for k, v in self.reader.batch(self.clips[pos], rng).items()}

    def loader(self, order: np.ndarray, batch_size: int, workers: int, first: int = 0):
        """(video, audio) batches of ``order`` (positions) from batch ``first`` on, formed in loader worker
        processes."""
        return step_loader(self.store_path, self.spec, Positions(self.clips, order, batch_size), first,
                           len(order) // batch_size, workers)


class Positions:
    """Step s -> the clip indices of positions order[s*size:(s+1)*size] (picklable for loader workers)."""

    def __init__(self, clips: np.ndarray, order: np.ndarray, size: int):
        self.clips, self.order, self.size = clips, order, size

    def __call__(self, reader, step: int) -> np.ndarray:
        return self.clips[self.order[step * self.size:(step + 1) * self.size]]


def encoders(video_dim: int, audio_dim: int, feat_dim: int, end_to_end_audio: bool, end_to_end_video: str = "",
             video_weights: str = "") -> nn.ModuleDict:
    """A trainable encoder per modality; end-to-end audio puts DAVEnet (1024-d out) under the audio one,
    end-to-end video a torchvision CNN (``end_to_end_video``, from ``video_weights`` or scratch) under the
    video one."""
    if end_to_end_video:
        tower = VideoTower(end_to_end_video, video_weights)
        video = nn.Sequential(tower, encoder(tower.dim, feat_dim))
    else:
        video = encoder(video_dim, feat_dim)
    return nn.ModuleDict({"v": video,
                          "a": audio_head(encoder(1024 if end_to_end_audio else audio_dim, feat_dim), end_to_end_audio)})


class PseudoLabelMethod(Method):
    """What XDC and SeLaVi share as methods: they read video and audio at each caption's span, and `trainers
    eval` embeds with their encoders, each modality in its own space (no cross-modal retrieval to score, only
    clustering per modality)."""

    @classmethod
    def eval_spec(cls, cfg) -> ClipSpec:
        return clip_spec(cfg)

    @classmethod
    def encoder_state(cls, state: dict) -> dict:
        """The encoders' weights in model.pt's state."""
        return state

    @classmethod
    def rebuild(cls, cfg, raw: dict, state: dict) -> nn.Module:
        enc = encoders(raw["video_dim"], raw["audio_dim"], cfg.dim, cfg.end_to_end_audio, cfg.end_to_end_video)
        enc.load_state_dict(cls.encoder_state(state))
        return Embedder(enc)


class Embedder(nn.Module):
    """The encoders as `trainers eval` embeds with them: each modality in its own space (pseudo-label methods
    align no spaces, so there is no cross-modal retrieval to score, only clustering per modality)."""

    def __init__(self, encoders: nn.ModuleDict):
        super().__init__()
        self.encoders = encoders

    def embed(self, video, audio, words=None, nframes=None) -> dict[str, dict[str, torch.Tensor]]:
        frames = isinstance(video, tuple)  # (frames, count) for an end-to-end video tower
        b = {"video": video[0], "video_count": video[1]} if frames else {"video": video}
        z = forward(self.encoders, {**b, "audio": audio, "nframes": nframes}, audio.device)
        return {m: {m: torch.nn.functional.normalize(x, dim=1)} for m, x in z.items()}


def forward(encoders: nn.ModuleDict, b: dict, device) -> dict[str, torch.Tensor]:
    """{'v', 'a'} encoder outputs of a batch (a ClipReader batch as tensors), in fp32 (bf16 autocast on CUDA)."""
    video = b["video"].to(device)
    if video.dim() == 5:  # (B, F, 3, H, W) frames for an end-to-end video tower, with their count
        video = (video, b["video_count"].to(device))
    with autocast(device):
        z = {"v": encoders["v"](video),
             "a": encode_audio(encoders["a"], b["audio"].to(device).float(), b["nframes"].to(device))}
    return {m: x.float() for m, x in z.items()}


def encoder(d_in: int, d_out: int = 512, hidden: int = 512) -> nn.Sequential:
    """Small trainable encoder on a cached clip feature (stands in for R(2+1)D / ResNet on raw input)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out), nn.BatchNorm1d(d_out))


@torch.no_grad()
def encode_chunks(encoders: nn.ModuleDict, clips: ClipSet, positions: np.ndarray | None = None, device="cpu",
                  rng: np.random.Generator | None = None):
    """(positions, {'v', 'a'} encoder outputs) a chunk at a time, eval mode (no augmentation unless ``rng``)."""
    was = encoders.training
    encoders.eval()
    towers = clips.spec.end_to_end_audio or clips.spec.frames_group
    for pos, b in clips.chunks(positions, 256 if towers else 4096, rng):
        yield pos, {m: z.cpu() for m, z in forward(encoders, b, device).items()}
    encoders.train(was)


def encode(encoders: nn.ModuleDict, clips: ClipSet, positions: np.ndarray | None = None, device="cpu",
           dtype=torch.float32, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Encoder outputs for the clips at ``positions`` (default: all), kept as ``dtype`` (float16 halves RAM),
    written into preallocated tensors (no second copy while concatenating); ``rng``: with augmentations."""
    n = len(clips) if positions is None else len(positions)
    out: dict[str, torch.Tensor] = {}
    i = 0
    for _, z in encode_chunks(encoders, clips, positions, device, rng):
        for m, x in z.items():
            if m not in out:
                out[m] = torch.empty(n, x.shape[1], dtype=dtype)
            out[m][i:i + len(x)] = x
        i += len(z["v"])
    return out or {m: torch.zeros(0, 0, dtype=dtype) for m in "va"}


def export_labels(run: Path, clips: ClipSet, labels: dict[str, np.ndarray], best_of: str | None = None) -> dict:
    """Write <run>/labels.csv and labels.zarr (one column per labelling), a chunk of clips at a time, and
    score each labelling against every label column of the store. ``best_of``: prefix of the labellings to
    pick the best (oracle) from."""
    import zarr

    from pipeline.store import ColumnWriter

    names = sorted(labels)
    store = clips.reader.store
    group = zarr.open_group(str(run / "labels.zarr"), mode="w")
    columns = ColumnWriter(group, {"key": str, **{n: "int32" for n in names}})
    with open(run / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", *names])
        for a in range(0, len(clips), 1 << 16):
            keys = store.clip_keys(clips.clips[a:a + (1 << 16)])
            w.writerows([k, *(int(labels[n][a + i]) for n in names)] for i, k in enumerate(keys))
            columns.append({"key": keys, **{n: labels[n][a:a + len(keys)] for n in names}})
    columns.close()
    results: dict = {"clips": len(clips), "labellings": names, "metrics": {}}
    for column, truth in store.labels(clips.clips).items():
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
            k_c = f"K {m['K']} {'=' if m['K'] == m['C'] else '!='} C {m['C']}"
            lines.append(f"  {column:12s} {name:14s} NMI {m['NMI']:.3f}  aNMI {m['aNMI']:.3f}  ARI {m['ARI']:.3f}  "
                         f"acc {m['accuracy']:.3f}  purity {m['purity']:.3f} (per cluster "
                         f"{m['mean cluster purity']:.3f}, entropy {m['mean cluster entropy']:.2f})  {k_c}")
        if column in results.get("best_head", {}):
            b = results["best_head"][column]
            lines.append(f"  {column:12s} best head: {b['head']} (NMI {b['NMI']:.3f}; picked with the labels)")
    return "\n".join(lines) or "  (no label column with 2+ values to score against)"
