"""3D clip features: a torchvision video model over non-overlapping clips of 16 frames, its classifier removed.

The HowTo100M 3D recipe (R(2+1)D-18, R3D-18, MC3-18): frames at 24 fps from the same single decode, short side
112, centre crop 112x112, one feature per 16 frames (1.5 rows per second), fc removed (global average pool),
L2-normalised per clip, normalised with the mean/std of torchvision's Kinetics-400 video weights. S3D, MViT-v2-S
and Swin3D-T read 224x224 crops with their own weights' mean/std (torchvision's transforms for them); their
heads are `classifier` (S3D: dropout + 1x1x1 conv, then a mean over time and space) and `head` (a linear layer
on the class token or the pooled tokens): whichever the model has is replaced by the identity, and the feature
is what fed it. A tail of fewer than 16 frames makes no row.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import CLIP_FRAMES, Extractor, Options
from .frames import frozen_torchvision

KINETICS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989), "kinetics mean/std")
# per architecture: crop side, mean, std (torchvision's weights' transforms); others: 112 and KINETICS
INPUT = {"s3d": (224, *KINETICS), "mvit_v2_s": (224, (0.45,) * 3, (0.225,) * 3, "mvit mean/std 0.45/0.225"),
         "mvit_v1_b": (224, (0.45,) * 3, (0.225,) * 3, "mvit mean/std 0.45/0.225"),
         "swin3d_t": (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet mean/std")}


def strip_head(model: torch.nn.Module) -> tuple[str, int]:
    """Replace the classifier of a torchvision video model (`fc`, `head` or `classifier`) by the identity;
    (its name, the size of what fed it)."""
    for name in ("fc", "head", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            last = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d))]
            if not last:
                break
            dim = last[-1].in_features if isinstance(last[-1], torch.nn.Linear) else last[-1].in_channels
            setattr(model, name, torch.nn.Identity())
            return name, dim
    raise ValueError(f"{type(model).__name__}: no fc, head or classifier with a Linear or Conv3d to remove")


class VideoClipModel(Extractor):
    consumes = CLIP_FRAMES
    fps, frames_per_clip = 24.0, 16
    preload = ("torchvision",)

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        if opts.decoder == "ffmpeg":
            raise ValueError(f"{name}: 3D clip groups decode dense frames in-process; use --decoder pyav or nvdec")
        model, self.weights_sha256 = frozen_torchvision(name, opts, name, f"--weights {name}=PATH")
        head, self.dim = strip_head(model)
        self.side, mean, std, normalise = INPUT.get(name, (112, *KINETICS))
        self.mean, self.std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (mean, std))
        self.model = model.eval().to(opts.device)
        self.weights, self.random_init = opts.weights_for(name), opts.is_random(name)
        self.rate = self.fps / self.frames_per_clip
        self.description = f"torchvision.models.video.{name}, {head} removed ({self.dim}-d)"
        self.params = dict(fps=self.fps, selection="ffmpeg fps filter", rotation="display matrix applied",
                           frames_per_clip=self.frames_per_clip, overlap=0, short_side=self.side,
                           crop=f"centre {self.side}x{self.side}", interpolation="bicubic",
                           normalise=normalise, l2_normalize=True, tail="< 16 frames dropped",
                           precision=opts.precision, dtype="float16")

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """(B, 16, H, W, 3) uint8 (short side ``side``) -> (B, dim)."""
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.opts.device)
        h, w = x.shape[2:4]
        top, left = (h - self.side) // 2, (w - self.side) // 2
        x = x[:, :, top:top + self.side, left:left + self.side]
        x = x.permute(0, 4, 1, 2, 3).float().div_(255)  # (B, 3, T, H, W)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        with self.autocast():
            y = self.model(x)
        return torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy()
