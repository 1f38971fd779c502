"""`trainers mmv`: MMV (Alayrac et al. 2020) heads over the cache, with the FAC / shared / disjoint graphs.

Spec: shared/spec/mmv_xdc_selavi.md section 2. Video-audio pairs use NCE, video-text pairs MIL-NCE over
the K narrations nearest in time; both on L2-normalised embeddings at temperature 0.07, weighted and
normalised by the sum of weights. Clips missing a modality are masked (never negatives, not averaged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clips import ClipSpec, video_groups
from ..data import ClipReader
from ..losses import milnce
from ..method import Method, TrainConfig
from ..model import SentenceMaxpool
from ..run import warmup_cosine
from ..towers import audio_head, encode_audio
from . import register

GRAPHS = ("fac", "shared", "disjoint")


@dataclass
class MMVConfig(TrainConfig):
    graph: Literal["fac", "shared", "disjoint"] = "fac"  # how the spaces connect: fac (MMV's best: text meets video through the va space), shared, disjoint
    dim_va: int = 512  # fine video-audio space size (MMV: 512)
    dim_vat: int = 256  # coarse space shared with text, FAC (MMV: 256)
    text_dim: int = 2048  # text backbone width: word2vec -> Conv1D(1x1) -> ReLU -> max over words (MMV: 2048)
    candidates: int = 5  # MIL-NCE positives: the anchor narration and its nearest neighbours in time (MMV: 5)
    max_words: int = 16  # word2vec words per narration (MMV: 16)
    min_time: float = 0.0  # seconds: captions merged until a clip lasts this long (MMV uses each narration as is)
    temperature: float = 0.07  # NCE / MIL-NCE temperature on L2-normalised embeddings (MMV: 0.07)
    # weight of the video-audio NCE, normalised by the sum of weights (MMV: 1, as VATT's MMV config; the paper
    # gives 10:1 for HowTo100M alone without saying which term gets the 10)
    weight_va: float = 1.0
    weight_vt: float = 1.0  # weight of the video-text MIL-NCE (MMV: 1)
    loss: Literal["code", "paper"] = "code"  # code = the released loss (positives counted twice); paper = the paper's formula
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second
    # the frozen text input: word2vec (word vectors into the Conv1D + max-pool backbone, MMV) or a per-clip
    # sentence-embedding group, e.g. hf_text (each narration's frozen embedding into the text head)
    text_group: str = "word2vec"
    batch_size: int = 256  # clips per step; negatives are the rest of the batch (MMV: thousands on TPUs)
    steps: int = 1000  # optimiser steps (MMV: ~500k)
    lr: float = 2e-3  # Adam learning rate (MMV: 0.002)
    # linear warm-up steps before the cosine decay (MMV: 5000 of ~500k steps; ours: 100, a tenth of the default
    # run, as 5000 would outlast it)
    warmup: int = 100


def mlp_bn(d_in: int, d_out: int) -> nn.Sequential:
    """MMV's 'mlp@512' head with BN after the projection: Linear -> BN -> ReLU -> Linear(no bias) -> BN."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(),
                         nn.Linear(d_out, d_out, bias=False), nn.BatchNorm1d(d_out))


class MMV(nn.Module):
    def __init__(self, graph: str, video_dim: int, audio_dim: int, we_dim: int, dim_va: int = 512,
                 dim_vat: int = 256, text_dim: int = 2048, end_to_end_audio: bool = False, pooled_text: bool = False):
        """``pooled_text``: text arrives as frozen sentence embeddings (..., we_dim), not word vectors."""
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"unknown MMV graph {graph!r}; choose from {GRAPHS}")
        self.graph, self.pooled_text = graph, pooled_text
        self.text_backbone = nn.Identity() if pooled_text else SentenceMaxpool(we_dim, text_dim)
        text_dim = we_dim if pooled_text else text_dim
        self.v_va, self.a_va = mlp_bn(video_dim, dim_va), audio_head(nn.Linear(audio_dim, dim_va), end_to_end_audio)
        if graph == "fac":  # text meets video in a coarser space reached *through* the video-audio space
            self.va_vat = nn.Sequential(nn.Linear(dim_va, dim_vat), nn.BatchNorm1d(dim_vat))
            self.t_vt = nn.Linear(text_dim, dim_vat)
        elif graph == "shared":  # one head per modality, one space
            self.t_vt = nn.Linear(text_dim, dim_va)
        else:  # disjoint: video has a separate head for text
            self.v_vt, self.t_vt = mlp_bn(video_dim, dim_va), nn.Linear(text_dim, dim_va)

    def video_text(self, video: torch.Tensor, z_v_va: torch.Tensor) -> torch.Tensor:
        if self.graph == "fac":
            return self.va_vat(torch.relu(z_v_va))
        return z_v_va if self.graph == "shared" else self.v_vt(video)

    def text(self, words: torch.Tensor) -> torch.Tensor:
        """(..., W, 300) word vectors (or frozen embeddings (..., D)) -> (..., D) text embedding."""
        if self.pooled_text:
            return self.t_vt(words)
        lead = words.shape[:-2]
        return self.t_vt(self.text_backbone(words.reshape(-1, *words.shape[-2:]))).reshape(*lead, -1)

    def audio_text(self, z_a_va: torch.Tensor) -> torch.Tensor | None:
        """Audio in the text space (FAC: through the video's own va->vat head, as MMV at test time; shared: the
        one space; disjoint: none, audio never meets text)."""
        if self.graph == "fac":
            return self.va_vat(torch.relu(z_a_va))
        return z_a_va if self.graph == "shared" else None

    def embed(self, video, audio, words, nframes=None) -> dict[str, dict[str, torch.Tensor]]:
        """L2-normalised embeddings per space (MMV scores are cosine similarities) of the modalities given:
        va (video, audio), vt (video, text) and at (audio, text: MMV's audio->text path, never trained on)."""
        spaces: dict = {"va": {}, "vt": {}, "at": {}}
        if video is not None:
            z_v_va = self.v_va(video)
            spaces["va"]["v"], spaces["vt"]["v"] = z_v_va, self.video_text(video, z_v_va)
        if audio is not None:
            spaces["va"]["a"] = z_a_va = encode_audio(self.a_va, audio, nframes)
            if (z_a_t := self.audio_text(z_a_va)) is not None:
                spaces["at"]["a"] = z_a_t
        if words is not None:
            spaces["vt"]["t"] = self.text(words)
            if spaces["at"]:
                spaces["at"]["t"] = spaces["vt"]["t"]
        return {s: {m: F.normalize(z, dim=-1) for m, z in d.items()} for s, d in spaces.items() if d}


def build(cfg: MMVConfig, video_dim: int, audio_dim: int, we_dim: int) -> MMV:
    """``audio_dim``: the store's audio group (end to end, DAVEnet's 1024-d output feeds the head)."""
    return MMV(cfg.graph, video_dim, 1024 if cfg.end_to_end_audio else audio_dim, we_dim, cfg.dim_va, cfg.dim_vat,
               cfg.text_dim, cfg.end_to_end_audio, pooled_text=cfg.text_group != "word2vec")


def clip_spec(cfg: MMVConfig, modalities: str = "vat", min_time: float | None = None,
              candidates: int | None = None) -> ClipSpec:
    return ClipSpec(modalities, cfg.min_time if min_time is None else min_time, cfg.max_words,
                    cfg.end_to_end_audio, cfg.audio_group, cfg.audio_frames,
                    candidates=cfg.candidates if candidates is None else candidates,
                    video_groups=video_groups(cfg.video_groups),
                    text_embedding="" if cfg.text_group == "word2vec" else cfg.text_group)


class MMVSampler:
    """batch_size distinct clips of the whole store, a pure function of (seed, step)."""

    def __init__(self, n_clips: int, batch_size: int, seed: int):
        self.n, self.size, self.seed = n_clips, batch_size, seed

    def __call__(self, reader: ClipReader, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, step]).choice(self.n, self.size, replace=False)


@register
class MMVMethod(Method):
    """Clips missing a modality are masked: never negatives, not averaged."""
    name, Config = "mmv", MMVConfig
    # the paper's FAC model (spec mmv_xdc_selavi.md 2.2-2.4; the released config's heads; VATT's MMV loss, 1:1),
    # ~500k steps (as reviews of the paper say; unverified). Its batch size (thousands of clips on TPUs) is not
    # in what we can read: ours stays (docs/fidelity.md)
    paper = dict(graph="fac", dim_va=512, dim_vat=256, text_dim=2048, candidates=5, max_words=16, min_time=0.0,
                 temperature=0.07, weight_va=1.0, weight_vt=1.0, loss="code", lr=2e-3, warmup=5000, steps=500_000)
    help = "MMV FAC/shared/disjoint heads with NCE (video-audio) and MIL-NCE (video-text)"

    def setup(self) -> dict:
        cfg = self.cfg
        self.spec = clip_spec(cfg)
        reader = ClipReader(cfg.store, self.spec)
        for pair in ("va", "vt"):  # MMV masks a missing modality, but each pair needs clips that have both
            ClipReader(reader.store, clip_spec(cfg, pair, candidates=0)).require_usable(
                f"clip with both {pair[0]} and {pair[1]}")
        self.n = reader.store.n_clips
        if self.n < cfg.batch_size:
            raise ValueError(f"{self.n} clips but --batch-size {cfg.batch_size}; lower it")
        self.missing = {m: int(reader.counts[~ok].sum()) for m, ok in reader.ok.items()}
        self.steps = cfg.steps
        self.vectors = reader.vectors.to(cfg.device)
        we_dim = reader.text_dim or int(self.vectors.shape[1])
        self.model = build(cfg, reader.video_dim, reader.audio_dim, we_dim).to(cfg.device)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=True)
        self.optimizers = [opt]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))]
        return {"video_dim": reader.video_dim, "audio_dim": reader.audio_dim, "we_dim": we_dim}

    def describe(self, step: int) -> str:
        return (f"mmv {self.cfg.graph}: {self.n} clips (clips of videos missing a modality, masked: {self.missing}), "
                f"loss variant {self.cfg.loss}, starting at step {step}")

    def sampler(self, step: int):
        return MMVSampler(self.n, self.cfg.batch_size, self.cfg.seed), self.steps

    def forward(self, b: dict, step: int):
        dev, model = self.cfg.device, self.model
        video = b["video"].to(dev)
        words = (torch.as_tensor(b["cand_emb"]).to(dev) if "cand_emb" in b  # (B, K, D) frozen embeddings
                 else self.vectors[torch.as_tensor(b["cand_words"]).to(self.vectors.device)].to(dev))  # (B, K, W, 300)
        z_v_va = model.v_va(video)
        return (z_v_va, encode_audio(model.a_va, b["audio"].to(dev).float(), b["nframes"].to(dev)),
                model.video_text(video, z_v_va), model.text(words))

    def loss(self, out, b: dict, step: int) -> dict:
        cfg, dev = self.cfg, self.cfg.device
        z_v_va, z_a, z_vt, z_t = out
        cand_ok, v, a = b["cand_ok"], b["valid_v"], b["valid_a"]  # cand_ok (B, K): a narration with known words
        nce = milnce(z_v_va, z_a, (v & a).to(dev), None, cfg.temperature, cfg.loss)
        mil = milnce(z_vt, z_t, (v & cand_ok.any(1)).to(dev), cand_ok.to(dev), cfg.temperature, cfg.loss)
        total = (cfg.weight_va * nce + cfg.weight_vt * mil) / (cfg.weight_va + cfg.weight_vt)
        return {"loss": total, "nce_va": nce, "milnce_vt": mil}

    def finish(self, run) -> dict:
        return {"clips": self.n}

    @classmethod
    def eval_spec(cls, cfg: MMVConfig) -> ClipSpec:
        return clip_spec(cfg, "vat", 0.0, 0)

    @classmethod
    def rebuild(cls, cfg: MMVConfig, raw: dict, state: dict) -> MMV:
        model = build(cfg, raw["video_dim"], raw["audio_dim"], raw["we_dim"])
        model.load_state_dict(state)
        return model
