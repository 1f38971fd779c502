"""End-to-end towers: trainable backbones over cached inputs instead of frozen features (DAVEnet on log-mel
windows, a torchvision CNN on JPEG frames, a Hugging Face text encoder on tokenizer ids), and the fixed
summaries of those inputs that ``--recon-targets input`` reconstructs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from features.audio import FLOOR_DB
from features.davenet import DAVEnet
from features.frames import MEAN, STD
from features.optional import require


def davenet_pool(davenet: nn.Module, audio: torch.Tensor, nframes: torch.Tensor | None) -> torch.Tensor:
    """DAVEnet over (B, 40, F) log-mel windows, the mean over each clip's first max(1, nframes // r) output
    frames, r = round(T_in / T_out) (MCN's eval rule: 16 for 1000+ input frames, less for short windows);
    ``nframes`` None: the mean over every output frame, padding included (MCN's training)."""
    out = davenet(audio)
    if nframes is None:
        return out.mean(dim=2)
    keep = torch.clamp(nframes // max(1, round(audio.shape[-1] / out.shape[2])), min=1)
    mask = (torch.arange(out.shape[2], device=out.device)[None] < keep[:, None]).to(out.dtype)
    return (out * mask[:, None]).sum(dim=2) / mask.sum(dim=1, keepdim=True)


class AudioTower(nn.Module):
    """End-to-end audio for the other trainers: DAVEnet on cached log-mel windows, pooled over each clip's
    own frames, then ``head`` (the layer the method puts on a cached 1024-d audio feature)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.davenet, self.head = DAVEnet(), head

    def forward(self, audio: torch.Tensor, nframes: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(davenet_pool(self.davenet, audio, nframes))


def audio_head(head: nn.Module, end_to_end: bool) -> nn.Module:
    """``head`` on cached features, or the same head behind a trainable DAVEnet."""
    return AudioTower(head) if end_to_end else head


def encode_audio(module: nn.Module, audio: torch.Tensor, nframes: torch.Tensor | None) -> torch.Tensor:
    return module(audio, nframes) if isinstance(module, AudioTower) else module(audio)


class HFTextTower(nn.Module):
    """A Hugging Face text encoder from a local folder, trained end to end on cached tokenizer ids: the
    attention-masked mean of its last hidden states (the pooling of the hf_text group), (B, hidden)."""

    def __init__(self, folder: str):
        super().__init__()
        from pathlib import Path

        require("transformers", "--end-to-end-text (a Hugging Face text tower)")
        from transformers import AutoModel
        from transformers.utils import logging

        if not Path(folder, "config.json").is_file():
            raise FileNotFoundError(f"--end-to-end-text {folder!r}: no Hugging Face model folder there (a local "
                                    "folder written by save_pretrained, with config.json; the one the store's "
                                    "hf_text group was extracted with)")
        logging.set_verbosity_error()
        self.encoder = AutoModel.from_pretrained(folder, local_files_only=True)
        self.dim = int(self.encoder.config.hidden_size)

    def forward(self, tokens: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, mask = tokens
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def check_tokenizer(folder: str, store, group: str) -> None:
    """Refuse an end-to-end text tower whose tokenizer would read the cached ids of ``store``'s ``group`` as
    other tokens than the ones they were made from."""
    import sys

    require("transformers", "--end-to-end-text (a Hugging Face text tower)")
    from transformers import AutoTokenizer

    from features.hf import tokenizer_sha256

    record = store.groups.get(group, {})
    if "tokenizer_sha256" not in record:
        print(f"warning: {store.path} does not record its {group} tokenizer (extracted before it was recorded); "
              f"cannot check that {folder} tokenises as it did", file=sys.stderr)
        return
    if tokenizer_sha256(AutoTokenizer.from_pretrained(folder, local_files_only=True)) != record["tokenizer_sha256"]:
        raise ValueError(f"--end-to-end-text {folder}: its tokenizer is not the one {store.path}'s {group} ids "
                         f"were made with (vocabulary or ids of a probe text differ; store: {record.get('weights')}); "
                         f"train with that folder, or one with the same tokenizer, or extract {group} again with "
                         "this one")


@dataclass(kw_only=True)
class VideoTowerOptions:
    """The end-to-end video options of every trainer with a video encoder (MCN, XDC, SeLaVi): a base of its
    config, so each takes the same flags."""
    # a torchvision image CNN (resnet18, resnet50, mobilenet_v3_small, ...) trained end to end on the store's
    # cached JPEG frames (the frames group) instead of the frozen --video-groups features
    end_to_end_video: str = ""
    video_weights: str = ""  # a torchvision state_dict .pth to fine-tune --end-to-end-video from (else from scratch)
    video_frames: int = 4  # frames per clip through the video tower, evenly spaced over the clip (stored at 1 fps)
    frame_size: int = 128  # end-to-end video: frames scaled to this short side (pixels), then cropped square
    crop_size: int = 112  # end-to-end video: the square the tower sees, in pixels (the centre in evaluation)
    augment: str = "crop,flip"  # end-to-end video in training: crop (a random square per clip), flip (horizontal, p=.5)


class VideoTower(nn.Module):
    """A torchvision image CNN (resnet18, resnet50, mobilenet_v3_small, ...) trained end to end on cached
    frames: each clip's frames (B, F, 3, H, W) uint8 with their count (B,), ImageNet-normalised, through the
    CNN without its classifier, max-pooled over the clip's frames (as frozen frame features are pooled),
    L2-normalised. ``weights``: a torchvision state_dict to fine-tune from (else from scratch)."""

    def __init__(self, arch: str, weights: str = ""):
        super().__init__()
        import torchvision

        from features.weights import load_into, load_state_dict

        try:
            cnn = torchvision.models.get_model(arch, weights=None)
        except ValueError as e:
            raise ValueError(f"--end-to-end-video {arch!r}: {e} (a torchvision image classifier, e.g. "
                             "resnet18)") from None
        if weights:
            load_into(cnn, load_state_dict(weights, arch, "--video-weights"), arch, weights)
        head = "fc" if isinstance(getattr(cnn, "fc", None), nn.Module) else "classifier"
        linear = next((m for m in getattr(cnn, head, nn.Identity()).modules() if isinstance(m, nn.Linear)), None)
        if linear is None:
            raise ValueError(f"--end-to-end-video {arch!r}: no fc / classifier layer to remove (use a CNN such as "
                             "resnet18, resnet50, mobilenet_v3_small, efficientnet_b0)")
        setattr(cnn, head, nn.Identity())
        self.cnn, self.dim = cnn.to(memory_format=torch.channels_last), linear.in_features

    def forward(self, frames: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, count = frames
        real = torch.arange(x.shape[1], device=x.device)[None] < count[:, None]  # (B, F)
        pixels = (x[real].float() / 255 - MEAN.to(x.device)) / STD.to(x.device)
        y = self.cnn(pixels.contiguous(memory_format=torch.channels_last)).flatten(1)
        pooled = y.new_full((*real.shape, y.shape[1]), float("-inf"))
        pooled[real] = y
        pooled = pooled.amax(dim=1)
        return F.normalize(torch.where(count[:, None] > 0, pooled, torch.zeros_like(pooled)), dim=1)


# ---- what --recon-targets input reconstructs: fixed data, never a lever for the tower ------------------

VIDEO_GRID = 4  # frames summarised as the mean RGB of a 4 x 4 grid: 48 numbers


def video_summary(frames: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, 3 * 16): each cell's mean colour on [0, 1] over a 4 x 4 grid, averaged over the clip's frames."""
    x, count = frames
    real = (torch.arange(x.shape[1], device=x.device)[None] < count[:, None]).to(torch.float32)
    grid = F.adaptive_avg_pool2d(x.flatten(0, 1).float() / 255, VIDEO_GRID).view(*x.shape[:2], -1)
    return (grid * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True).clamp(min=1)


def logmel_summary(audio: torch.Tensor, nframes: torch.Tensor | None) -> torch.Tensor:
    """(B, 80): the clip's log-mel mean and standard deviation per band over its own frames, on [0, 1] (0 =
    the -80 dB floor, 1 = the video's loudest)."""
    x = (audio.float() / -FLOOR_DB + 1).clamp(0, 1)
    n = nframes if nframes is not None else torch.full((len(x),), x.shape[-1], device=x.device)
    mask = (torch.arange(x.shape[-1], device=x.device)[None] < n[:, None]).to(x.dtype)[:, None]
    count = mask.sum(dim=2).clamp(min=1)
    mean = (x * mask).sum(dim=2) / count
    std = (((x - mean[..., None]) ** 2 * mask).sum(dim=2) / count).sqrt()
    return torch.cat([mean, std], dim=1)


def word_summary(words: torch.Tensor) -> torch.Tensor:
    """(B, 300): the mean of the caption's word vectors, padding rows (zeros) left out."""
    known = (words.abs().sum(dim=2) > 0).to(words.dtype)
    return (words * known[..., None]).sum(dim=1) / known.sum(dim=1, keepdim=True).clamp(min=1)
