"""MCN heads (spec: shared/spec/mcn.md section 1) and the embedding-space combos.

A combo is terms joined by '+': a pair (va, vt, at) or 'all' (v, a, t). Each term is its own
embedding space with its own projection heads and reconstruction decoders; the audio backbone
(DAVEnet, end-to-end mode) is shared by all spaces.
"""
from __future__ import annotations

import torch
from torch import nn

from features.davenet import DAVEnet

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
                 detach_targets: bool = True):
        super().__init__()
        self.modalities, self.detach_targets = modalities, detach_targets
        if "v" in modalities:
            self.video = GatedEmbeddingUnit(video_dim, dim)
        if "a" in modalities:
            self.audio_gate, self.audio_proj = GatedEmbeddingUnit(audio_dim, audio_dim), nn.Linear(audio_dim, dim)
        if "t" in modalities:
            self.text_pool, self.text = SentenceMaxpool(we_dim, dim), GatedEmbeddingUnit(dim, dim)
        self.decoders = nn.ModuleDict({m: decoder(dim, {"v": video_dim, "a": audio_dim, "t": dim}[m])
                                       for m in modalities}) if recon else None

    def forward(self, video, audio, words):
        emb, targets = {}, {}
        if "v" in self.modalities:
            emb["v"], targets["v"] = self.video(video), video
        if "a" in self.modalities:
            emb["a"], targets["a"] = self.audio_proj(self.audio_gate(audio)), audio
        if "t" in self.modalities:
            pooled = self.text_pool(words)
            emb["t"], targets["t"] = self.text(pooled), pooled
        # a trainable tower's output as its own target (MCN's code: the text pooling, end-to-end DAVEnet) can be
        # minimised by collapsing the tower: detached, the target is a fixed point to reconstruct, not a lever
        recon = [(self.decoders[m](emb[m]), targets[m].detach() if self.detach_targets else targets[m])
                 for m in emb] if self.decoders is not None else []
        return emb, recon


class MCN(nn.Module):
    def __init__(self, combo: str, dim: int = 6144, video_dim: int = 2048, audio_dim: int = 1024,
                 we_dim: int = 300, end_to_end_audio: bool = False, recon: bool = True,
                 detach_targets: bool = True, pool_padding: bool = False):
        super().__init__()
        self.spaces_spec = parse_combo(combo)
        self.davenet = DAVEnet() if end_to_end_audio else None
        self.pool_padding = pool_padding
        self.spaces = nn.ModuleDict({name: Space(mods, dim, video_dim, audio_dim, we_dim, recon, detach_targets)
                                     for name, mods in self.spaces_spec.items()})

    def audio_features(self, audio: torch.Tensor, nframes: torch.Tensor | None = None) -> torch.Tensor:
        """Cached mode: already pooled 1024-d. End-to-end: DAVEnet over (B, 40, F) log-mel, the mean over the
        first max(1, nframes // r) output frames, r = round(T_in / T_out) (MCN's eval rule: 16 for 1000+ input
        frames, less for short windows). ``pool_padding`` (MCN's training): the mean over every output frame,
        the padding's included."""
        if self.davenet is None:
            return audio
        out = self.davenet(audio)
        if nframes is None or (self.training and self.pool_padding):
            return out.mean(dim=2)
        keep = torch.clamp(nframes // max(1, round(audio.shape[-1] / out.shape[2])), min=1)
        mask = (torch.arange(out.shape[2], device=out.device)[None] < keep[:, None]).to(out.dtype)
        return (out * mask[:, None]).sum(dim=2) / mask.sum(dim=1, keepdim=True)

    def forward(self, video, audio, words, nframes=None):
        a = self.audio_features(audio, nframes) if audio is not None else None
        return {name: space(video, a, words) for name, space in self.spaces.items()}

    def embed(self, video, audio, words, nframes=None) -> dict[str, dict[str, torch.Tensor]]:
        return {name: emb for name, (emb, _) in self(video, audio, words, nframes).items()}
