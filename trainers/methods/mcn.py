"""`trainers mcn`: MCN (Chen et al. 2021) heads over the feature cache: MMS + clustering + reconstruction.

Spec: shared/spec/mcn.md. The loop is trainers/train.py; this file is MCN's config, model, sampler and loss.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from ..clips import FRAMES_GROUP, LOGMEL_FLOOR, ClipSpec, check_augment, video_groups
from ..data import ClipReader
from ..loader import text_input, video_input
from ..losses import assign, cluster_loss, kmeans_cosine, mms, reconstruction_loss
from ..method import Method, TrainConfig
from ..model import MCN, parse_combo
from ..run import warmup_cosine
from ..towers import VideoTowerOptions, check_tokenizer
from . import register


@dataclass
class MCNConfig(TrainConfig, VideoTowerOptions):
    combo: str = "all"  # embedding spaces joined by '+': pairs va, vt, at or all (MCN's one space: all)
    dim: int = 6144  # joint embedding size D (MCN's README run: 6144; its argument default 2048)
    videos_per_batch: int = 128  # videos per step (MCN: 128)
    clips_per_video: int = 32  # captions drawn per video per step, n_pair (MCN: 32 -> 4096 clips per step)
    # clips per step, the unit of the other trainers: given, it sets --videos-per-batch to batch_size /
    # --clips-per-video (and config.json records that); 0: --videos-per-batch x --clips-per-video
    batch_size: int = 0
    steps: int = 1000  # optimiser steps of the run, 0: --epochs passes (MCN: 30 epochs of ~9,100 steps on HowTo100M)
    epochs: float = 0  # passes over the usable videos, the run's length where --steps is 0 (MCN: 30)
    lr: float = 1e-4  # Adam learning rate (MCN: 1e-4)
    # linear warm-up steps before the cosine decay to 0 at the run's end (MCN: 5000 of its ~273k steps; ours:
    # 100, a tenth of the default run, as 5000 would outlast it)
    warmup: int = 100
    margin: float = 0.001  # MMS and clustering margin delta, on raw dot products (MCN: 0.001)
    min_time: float = 10.0  # seconds: neighbouring captions merged until a clip lasts this long (MCN: 10.0)
    max_words: int = 20  # word2vec words per clip (MCN: 20)
    clusters: int = 256  # k-means centroids K of the fused embedding (MCN: 256)
    # full k-means refit every N batches of an epoch (counted from its start), nearest-centroid assignment
    # between (MCN: 20)
    cluster_every: int = 20
    queue_steps: int = 20  # k-means queue length in steps (each step pushes half the clips of every video; MCN: 20)
    cluster_weight: float = 1.0  # weight of the clustering loss (MCN: 1)
    # clustering logits: cosine similarity to the centroids / this temperature (bounded); 0 = raw dot products of
    # the unnormalised embeddings (MCN: 0; with end-to-end audio on real speech they keep MMS at chance, 1 learns
    # as MMS alone does: README)
    cluster_temperature: float = 1.0
    recon_weight: float = 50.0  # weight of the reconstruction loss (MCN: 50)
    no_cluster: bool = False  # ablation: no clustering loss
    no_recon: bool = False  # ablation: no reconstruction loss (no decoders)
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second (MCN: 1000 = 10 s)
    end_to_end_text: str = ""  # a local Hugging Face folder: that encoder trained on the store's hf_text token ids
    # the frozen text input: word2vec (word vectors, max-pooled by the text head, MCN) or a per-clip sentence-
    # embedding group, e.g. hf_text (each clip's frozen embedding, a merged clip's mean, into the text GEU)
    text_group: str = "word2vec"
    max_tokens: int = 64  # token ids per clip for --end-to-end-text (the merged captions' ids, cut at this many)
    # reconstruction targets of a trainable tower: input = a summary of its input, fixed data (end-to-end
    # audio: the clip's log-mel mean and std per band; text: the mean word vector); detached = its own output,
    # detached; mcn = its own output, not detached (MCN's code: the end-to-end tower collapses). Frozen
    # features are their own input in every mode.
    recon_targets: Literal["input", "detached", "mcn"] = "input"
    # end-to-end audio windows shorter than --audio-frames: silence = padded with the log-mel floor (-80 dB),
    # only the clip's own frames pooled; mcn = padded with 0 dB (the loudest value) and the padding pooled
    audio_padding: Literal["silence", "mcn"] = "silence"
    normalize_audio: bool = False  # L2-normalise pooled frozen audio features (random-init DAVEnet's have norm ~900)
    # mcn = every caption is a clip (one with no known word takes its merged neighbours' words; MCN); strict =
    # such clips, and those starting before 12.5 ms, are left out. Evaluation always scores the strict set.
    clip_population: Literal["mcn", "strict"] = "mcn"

    def __post_init__(self):
        if self.batch_size:
            if self.batch_size % self.clips_per_video:
                raise ValueError(f"--batch-size {self.batch_size} is not a multiple of --clips-per-video "
                                 f"{self.clips_per_video} (MCN draws whole videos)")
            self.videos_per_batch, self.batch_size = self.batch_size // self.clips_per_video, 0
        if self.end_to_end_text and self.text_group != "word2vec":
            raise ValueError("--end-to-end-text trains a text tower on token ids; --text-group feeds frozen "
                             "embeddings: give one of them")
        super().__post_init__()


def modalities_of(combo: str) -> str:
    return "".join(sorted(set("".join(parse_combo(combo).values())), key="vat".index))


def build_model(cfg: MCNConfig, video_dim: int, we_dim: int, audio_dim: int = 1024) -> MCN:
    """``audio_dim``: the frozen audio group's (end to end, DAVEnet's 1024-d output feeds the heads)."""
    check_augment(cfg.augment)
    return MCN(cfg.combo, cfg.dim, video_dim=video_dim, audio_dim=1024 if cfg.end_to_end_audio else audio_dim,
               we_dim=we_dim,
               end_to_end_audio=cfg.end_to_end_audio, recon=not cfg.no_recon,
               detach_targets=cfg.recon_targets != "mcn", pool_padding=cfg.audio_padding == "mcn",
               input_targets=cfg.recon_targets == "input", end_to_end_text=cfg.end_to_end_text,
               end_to_end_video=cfg.end_to_end_video, video_weights=cfg.video_weights,
               pooled_text=cfg.text_group != "word2vec")


def clip_spec(cfg: MCNConfig, min_time: float | None = None, audio_frames: int | None = None) -> ClipSpec:
    """What ``cfg``'s model reads of a clip (evaluation passes its own ``min_time`` and may widen the window)."""
    return ClipSpec(modalities_of(cfg.combo), cfg.min_time if min_time is None else min_time, cfg.max_words,
                    cfg.end_to_end_audio, cfg.audio_group, audio_frames or cfg.audio_frames,
                    audio_pad=0.0 if cfg.audio_padding == "mcn" else LOGMEL_FLOOR, normalize_audio=cfg.normalize_audio,
                    clip_population=cfg.clip_population, video_groups=video_groups(cfg.video_groups),
                    text_tokens=TEXT_GROUP if cfg.end_to_end_text else "", max_tokens=cfg.max_tokens,
                    text_embedding="" if cfg.text_group == "word2vec" else cfg.text_group,
                    frames_group=FRAMES_GROUP if cfg.end_to_end_video else "", video_frames=cfg.video_frames,
                    frame_size=cfg.frame_size, crop_size=cfg.crop_size, augment=cfg.augment)


TEXT_GROUP = "hf_text"  # the per-clip text group whose tokenizer ids end-to-end text reads


class MCNSampler:
    """Clip indices for a step: videos_per_batch videos of this epoch's permutation of the usable videos,
    clips_per_video captions drawn uniformly with replacement from each (MCN). Deterministic in (seed, step)."""

    def __init__(self, videos: np.ndarray, videos_per_batch: int, clips_per_video: int, seed: int):
        self.videos, self.per_batch, self.per_video, self.seed = videos, videos_per_batch, clips_per_video, seed
        self.steps_per_epoch = len(videos) // videos_per_batch
        self._epoch, self._perm = None, None

    def __call__(self, reader: ClipReader, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.videos))
        chosen = self.videos[self._perm[k * self.per_batch:(k + 1) * self.per_batch]]
        rng = np.random.default_rng([self.seed, epoch, k, 1])
        return np.concatenate([rng.choice(reader.usable_clips(v), self.per_video) for v in chosen.tolist()])


class Clusterer:
    """Queue of past fused embeddings + k-means centroids for one space, on the model's device: at MCN's sizes
    the queue is 8,192 x 6,144 floats per space, and k-means over it on the host (as before) moved 100 MB off the
    GPU and 500 MB through host memory every step. Checkpoints hold it on the CPU."""

    def __init__(self, length: int, dim: int, k: int, device="cpu"):
        self.device = torch.device(device)
        self.queue = torch.zeros(length, dim, device=self.device)
        self.filled = 0
        self.k = k
        self.centroids: torch.Tensor | None = None

    def push(self, fused: torch.Tensor) -> None:
        n = min(len(fused), len(self.queue))
        self.queue = torch.cat([self.queue[n:], fused[-n:].detach().float().to(self.device)])
        self.filled = min(len(self.queue), self.filled + n)

    def labels(self, fused: torch.Tensor, refit: bool, generator: torch.Generator) -> torch.Tensor:
        x = fused.detach().float().to(self.device)
        if self.filled == len(self.queue):
            x = torch.cat([self.queue, x])
        if refit or self.centroids is None:
            labels, self.centroids = kmeans_cosine(x, self.k, self.centroids, generator=generator)
        else:
            labels = assign(x, self.centroids)
        return labels[-len(fused):]

    def state(self) -> dict:
        return {"queue": self.queue.cpu(), "filled": torch.tensor(self.filled),
                "centroids": self.centroids.cpu() if self.centroids is not None else torch.zeros(0)}

    def load(self, s: dict) -> None:
        self.queue, self.filled = s["queue"].to(self.device), int(s["filled"])
        self.centroids = s["centroids"].to(self.device) if s["centroids"].numel() else None


def losses_for(out: dict, clusterers: dict, cfg: MCNConfig, step: int, steps_per_epoch: int, device):
    terms = {"mms": torch.zeros((), device=device), "cluster": torch.zeros((), device=device),
             "recon": torch.zeros((), device=device)}
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    for name, (emb, recon) in out.items():
        mods = list(emb)
        for i in range(len(mods)):
            for j in range(i + 1, len(mods)):
                terms["mms"] = terms["mms"] + mms(emb[mods[i]] @ emb[mods[j]].t(), cfg.margin)
        if not cfg.no_cluster:
            fused = sum(emb.values()) / len(emb)
            c = clusterers[name]
            if step % steps_per_epoch == 0:
                c.centroids = None  # MCN re-initialises the centroids every epoch
            # MCN refits when the batch index *within the epoch* is a multiple of the period (train_tri_kmeans.py)
            labels = c.labels(fused, step % steps_per_epoch % cfg.cluster_every == 0, g).to(device)
            centroids = c.centroids.to(device)
            terms["cluster"] = terms["cluster"] + sum(cluster_loss(e, centroids, labels, cfg.margin,
                                                                   cfg.cluster_temperature)
                                                      for e in emb.values()) / len(emb)
            half = fused.view(-1, cfg.clips_per_video, fused.shape[1])[:, :max(1, cfg.clips_per_video // 2)]
            c.push(half.reshape(-1, fused.shape[1]))
        if recon:
            terms["recon"] = terms["recon"] + reconstruction_loss(recon, cfg.recon_weight)
    return terms


def warn_audio_scale(audio: torch.Tensor, cfg: MCNConfig) -> None:
    """Frozen audio features far from unit scale (random-init DAVEnet: values up to ~230, clip norms ~900) make
    the reconstruction term (x --recon-weight) and the clustering distances swamp MMS: say so, with the fix."""
    norm = float(audio.float().norm(dim=1).mean()) if len(audio) else 0.0
    if norm > 10 and not cfg.normalize_audio:
        print(f"warning: the frozen audio features of {cfg.store} are unnormalised (mean clip-feature norm "
              f"{norm:.0f}, max |value| {float(audio.abs().max()):.0f}; video features have norm 1 per group): "
              f"their reconstruction (x {cfg.recon_weight:g}) and clustering distances will swamp MMS. Pass "
              "--normalize-audio to L2-normalise them, as the video groups are", file=sys.stderr)


@register
class MCNMethod(Method):
    name, Config = "mcn", MCNConfig
    help = "MCN heads (MMS + clustering + reconstruction) over cached features"
    # runs from before these settings existed were trained MCN's way
    legacy = {"recon_targets": "mcn", "audio_padding": "mcn", "normalize_audio": False, "clip_population": "strict"}
    # MCN's README run (MCN_sep_recon_r, train_tri_kmeans.py; spec mcn.md section 3). Left ours, as plain bugs:
    # --audio-padding (MCN pads with 0 dB, the loudest value). Its video input (ResNet-152 || ResNeXt-101 3D,
    # 4096-d) is the store's: --video-groups (docs/fidelity.md)
    paper = dict(combo="all", dim=6144, videos_per_batch=128, clips_per_video=32, batch_size=0, steps=0, epochs=30,
                 lr=1e-4, warmup=5000, margin=0.001, min_time=10.0, max_words=20, clusters=256, cluster_every=20,
                 queue_steps=20, cluster_weight=1.0, cluster_temperature=0.0, recon_weight=50.0, no_cluster=False,
                 no_recon=False, recon_targets="mcn", audio_frames=1000, normalize_audio=False, clip_population="mcn")

    def setup(self) -> dict:
        cfg = self.cfg
        self.spec = clip_spec(cfg)
        reader = ClipReader(cfg.store, self.spec)
        if cfg.end_to_end_text:
            check_tokenizer(cfg.end_to_end_text, reader.store, reader.spec.text_tokens)
        reader.require_usable(f"clip with all of {modalities_of(cfg.combo)}")
        self.videos, self.dropped = reader.usable_videos(), reader.dropped()
        if len(self.videos) < cfg.videos_per_batch:
            raise ValueError(f"{len(self.videos)} usable videos but --videos-per-batch {cfg.videos_per_batch}; "
                             f"lower it (dropped clips: {self.dropped})")
        self._sampler = MCNSampler(self.videos, cfg.videos_per_batch, cfg.clips_per_video, cfg.seed)
        self.steps = cfg.steps or math.ceil(cfg.epochs * self._sampler.steps_per_epoch)
        if self.steps < 1:
            raise ValueError("--steps 0 needs --epochs (passes over the usable videos)")
        self.vectors = reader.vectors.to(cfg.device)
        we_dim = reader.text_dim or int(self.vectors.shape[1])
        self.model = build_model(cfg, reader.video_dim, we_dim, reader.audio_dim).to(cfg.device)
        # fused: one kernel over all parameters (a DAVEnet update: 0.19 -> 0.03 s on 2 CPU cores)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=True)
        self.optimizers = [opt]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, self.steps))]
        self.clusterers = {name: Clusterer(cfg.queue_steps * cfg.videos_per_batch * max(1, cfg.clips_per_video // 2),
                                           cfg.dim, cfg.clusters, cfg.device) for name in self.model.spaces}
        self._first = None
        return {"video_dim": reader.video_dim, "audio_dim": reader.audio_dim, "we_dim": we_dim}

    def describe(self, step: int) -> str:
        return (f"mcn {self.cfg.combo}: {len(self.videos)} usable videos (dropped clips: {self.dropped or 'none'}), "
                f"{self._sampler.steps_per_epoch} steps/epoch, starting at step {step}")

    def sampler(self, step: int):
        return self._sampler, self.steps

    def forward(self, b: dict, step: int):
        cfg, dev = self.cfg, self.cfg.device
        if self._first is None:
            self._first = step
            if "a" in modalities_of(cfg.combo) and not cfg.end_to_end_audio:
                warn_audio_scale(b["audio"][b["valid_a"]], cfg)
        video, audio = video_input(b, dev, self.spec), b["audio"].to(dev, non_blocking=True).float()
        return self.model(video, audio, text_input(b, self.vectors, dev, self.spec), b["nframes"].to(dev))

    def loss(self, out, b: dict, step: int) -> dict:
        terms = losses_for(out, self.clusterers, self.cfg, step, self._sampler.steps_per_epoch, self.cfg.device)
        return {"loss": terms["mms"] + self.cfg.cluster_weight * terms["cluster"] + terms["recon"], **terms}

    def state_dict(self) -> dict:
        return {"clusterers": {k: c.state() for k, c in self.clusterers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, c in self.clusterers.items():
            c.load(state["clusterers"][k])

    def finish(self, run) -> dict:
        return {"videos": len(self.videos)}

    @classmethod
    def eval_spec(cls, cfg: MCNConfig) -> ClipSpec:
        return replace(clip_spec(cfg, min_time=0.0), clip_population="strict")

    @classmethod
    def rebuild(cls, cfg: MCNConfig, raw: dict, state: dict) -> MCN:
        model = build_model(cfg, raw["video_dim"], raw["we_dim"], raw.get("audio_dim", 1024))
        model.load_state_dict(state)
        return model
