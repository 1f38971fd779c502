"""MCN heads (spec: shared/spec/mcn.md section 1) and the embedding-space combos.

A combo is terms joined by '+': a pair (va, vt, at) or 'all' (v, a, t). Each term is its own
embedding space with its own projection heads and reconstruction decoders; the audio backbone
(DAVEnet, end-to-end mode) is shared by all spaces.
"""
from __future__ import annotations

import torch
from torch import nn

from features.audio import PARAMS as LOGMEL
from features.davenet import DAVEnet

from .towers import (VIDEO_GRID, HFTextTower, VideoTower, davenet_pool, logmel_summary, video_summary,
                     word_summary)

TERMS = {"va": "va", "av": "va", "vt": "vt", "tv": "vt", "at": "at", "ta": "at", "all": "vat"}


def parse_combo(combo: str) -> dict[str, str]:
    """'va+all' -> {'va': 'va', 'all': 'vat'} (space name -> modalities)."""
    spaces: dict[str, str] = {}
    for term in combo.split("+"):
        term = term.strip().lower()
        if term not in TERMS:
            raise ValueError(f"unknown combo term {term!r} in {combo!r}: use pairs va, vt, at or 'all', "
                             "joined by '+', e.g. va+all")
        if term in spaces or TERMS[term] in spaces.values():
            raise ValueError(f"combo {combo!r} repeats the space {term!r}")
        spaces[term] = TERMS[term]
    return spaces


class ContextGating(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x))  # = GLU(cat(x, fc(x)))


class GatedEmbeddingUnit(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc, self.cg = nn.Linear(d_in, d_out), ContextGating(d_out)

    def forward(self, x):
        return self.cg(self.fc(x))


class SentenceMaxpool(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):  # (B, words, d_in); padding rows are zeros and enter as ReLU(bias), as in MCN
        return torch.relu(self.fc(x)).max(dim=1).values


def decoder(d_in: int, d_out: int, hidden: int = 1024) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out), nn.ReLU())


class Space(nn.Module):
    """Projection heads (and decoders) of one embedding space."""

    def __init__(self, modalities: str, dim: int, video_dim: int, audio_dim: int, we_dim: int, recon: bool,
                 detach_targets: bool = True, target_dims: dict[str, int] | None = None, pooled_text: bool = False):
        super().__init__()
        self.modalities, self.detach_targets = modalities, detach_targets
        if "v" in modalities:
            self.video = GatedEmbeddingUnit(video_dim, dim)
        if "a" in modalities:
            self.audio_gate, self.audio_proj = GatedEmbeddingUnit(audio_dim, audio_dim), nn.Linear(audio_dim, dim)
        if "t" in modalities:  # pooled_text: a trainable text encoder's pooled (B, we_dim) output comes in
            self.text_pool = nn.Identity() if pooled_text else SentenceMaxpool(we_dim, dim)
            self.text = GatedEmbeddingUnit(we_dim if pooled_text else dim, dim)
        dims = {"v": video_dim, "a": audio_dim, "t": we_dim if pooled_text else dim, **(target_dims or {})}
        self.decoders = nn.ModuleDict({m: decoder(dim, dims[m]) for m in modalities}) if recon else None

    def forward(self, video, audio, words, inputs: dict | None = None):
        """Embeddings (and reconstruction pairs) of the modalities given; None: that modality is not embedded."""
        emb, targets = {}, {}
        if "v" in self.modalities and video is not None:
            emb["v"], targets["v"] = self.video(video), video
        if "a" in self.modalities and audio is not None:
            emb["a"], targets["a"] = self.audio_proj(self.audio_gate(audio)), audio
        if "t" in self.modalities and words is not None:
            pooled = self.text_pool(words)
            emb["t"], targets["t"] = self.text(pooled), pooled
        # a trainable tower's output as its own target (MCN's code: the text pooling, end-to-end DAVEnet) can be
        # minimised by collapsing the tower: detached, the target is a fixed point to reconstruct, not a lever
        targets.update(inputs or {})
        recon = [(self.decoders[m](emb[m]), targets[m].detach() if self.detach_targets else targets[m])
                 for m in emb] if self.decoders is not None else []
        return emb, recon


class MCN(nn.Module):
    """The spaces of a combo over shared inputs: frozen features, or end-to-end towers (trainers/towers.py)
    on cached log-mel (``end_to_end_audio``), JPEG frames (``end_to_end_video``: a torchvision arch) and
    tokenizer ids (``end_to_end_text``: a local Hugging Face folder)."""

    def __init__(self, combo: str, dim: int = 6144, video_dim: int = 2048, audio_dim: int = 1024,
                 we_dim: int = 300, end_to_end_audio: bool = False, recon: bool = True,
                 detach_targets: bool = True, pool_padding: bool = False, input_targets: bool = False,
                 end_to_end_text: str = "", end_to_end_video: str = "", video_weights: str = "",
                 pooled_text: bool = False):
        """``pooled_text``: text arrives as frozen sentence embeddings (B, we_dim), not word vectors."""
        super().__init__()
        self.spaces_spec = parse_combo(combo)
        self.pooled_text = pooled_text or bool(end_to_end_text)
        self.davenet = DAVEnet() if end_to_end_audio else None
        self.video_tower = VideoTower(end_to_end_video, video_weights) if end_to_end_video else None
        self.text_tower = HFTextTower(end_to_end_text) if end_to_end_text else None
        video_dim = self.video_tower.dim if self.video_tower is not None else video_dim
        we_dim = self.text_tower.dim if self.text_tower is not None else we_dim
        self.pool_padding = pool_padding
        # input_targets: a trainable tower reconstructs a summary of its own input (fixed data), not its output
        self.input_targets = input_targets
        dims = None
        if input_targets:
            dims = {"t": we_dim, **({"a": 2 * LOGMEL["n_mels"]} if end_to_end_audio else {}),
                    **({"v": 3 * VIDEO_GRID ** 2} if end_to_end_video else {})}
        self.spaces = nn.ModuleDict({name: Space(mods, dim, video_dim, audio_dim, we_dim, recon, detach_targets,
                                                 dims, self.pooled_text)
                                     for name, mods in self.spaces_spec.items()})

    def audio_features(self, audio: torch.Tensor, nframes: torch.Tensor | None = None) -> torch.Tensor:
        """Cached mode: already pooled 1024-d. End-to-end: DAVEnet over the log-mel, pooled (davenet_pool)."""
        if self.davenet is None:
            return audio
        return davenet_pool(self.davenet, audio, None if self.training and self.pool_padding else nframes)

    def input_summaries(self, video, audio, words, nframes) -> dict[str, torch.Tensor]:
        """What ``input_targets`` reconstructs, L2-normalised as a frozen video target (the clip's features)
        is: the text's mean word vector (a text tower's ids have no scale to reconstruct: its pooled output,
        detached); an end-to-end audio clip's log-mel statistics; an end-to-end video clip's colour grid."""
        out = {}
        if self.pooled_text:  # words: a tower's pooled output (its input ids have no scale), or frozen embeddings
            out["t"] = words
        elif words is not None:
            out["t"] = word_summary(words)
        if self.davenet is not None and audio is not None:
            out["a"] = logmel_summary(audio, nframes)
        if self.video_tower is not None and video is not None:
            out["v"] = video_summary(video)
        return {m: nn.functional.normalize(x.float(), dim=1) for m, x in out.items()}

    def forward(self, video, audio, words, nframes=None):
        """``video``: features (B, Dv), or with a video tower (frames, count); ``words``: word vectors (B, W,
        300), or with a text tower (token ids, mask), each (B, L)."""
        a = self.audio_features(audio, nframes) if audio is not None else None
        v = self.video_tower(video) if self.video_tower is not None and video is not None else video
        if self.text_tower is not None and words is not None:
            words = self.text_tower(words)
        inputs = self.input_summaries(video, audio, words, nframes) if self.input_targets else None
        return {name: space(v, a, words, inputs) for name, space in self.spaces.items()}

    def embed(self, video, audio, words, nframes=None) -> dict[str, dict[str, torch.Tensor]]:
        return {name: emb for name, (emb, _) in self(video, audio, words, nframes).items()}
