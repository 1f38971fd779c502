"""3D clip features: a torchvision video model (R(2+1)D-18, R3D-18) over non-overlapping clips of 16 frames.

The HowTo100M 3D recipe: frames at 24 fps from the same single decode, short side 112, centre crop 112x112,
one feature per 16 frames (1.5 rows per second), fc removed (global average pool), L2-normalised per clip.
Normalised with the mean/std torchvision's Kinetics-400 video weights use. A tail of fewer than 16 frames
makes no row.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import CLIP_FRAMES, Extractor, Options
from .frames import frozen_torchvision

MEAN = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.22803, 0.22145, 0.216989]).view(1, 3, 1, 1, 1)


class VideoClipModel(Extractor):
    consumes = CLIP_FRAMES
    fps, frames_per_clip, side = 24.0, 16, 112

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        if opts.decoder != "pyav":
            raise ValueError(f"{name}: 3D clip groups decode dense frames in-process; use --decoder pyav")
        model, self.weights_sha256 = frozen_torchvision(name, opts, name, f"--weights {name}=PATH")
        self.dim = model.fc.in_features
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(opts.device)
        self.weights, self.random_init = opts.weights_for(name), opts.is_random(name)
        self.rate = self.fps / self.frames_per_clip
        self.description = f"torchvision.models.video.{name}, fc removed (global average pool, {self.dim}-d)"
        self.params = dict(fps=self.fps, selection="ffmpeg fps filter", rotation="display matrix applied",
                           frames_per_clip=self.frames_per_clip, overlap=0, short_side=self.side,
                           crop=f"centre {self.side}x{self.side}", interpolation="bicubic",
                           normalise="kinetics mean/std", l2_normalize=True, tail="< 16 frames dropped",
                           precision=opts.precision, dtype="float16")

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """(B, 16, H, W, 3) uint8 (short side 112) -> (B, dim)."""
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.opts.device)
        h, w = x.shape[2:4]
        top, left = (h - self.side) // 2, (w - self.side) // 2
        x = x[:, :, top:top + self.side, left:left + self.side]
        x = x.permute(0, 4, 1, 2, 3).float().div_(255)  # (B, 3, T, H, W)
        x = (x - MEAN.to(x.device)) / STD.to(x.device)
        with self.autocast():
            y = self.model(x)
        return torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy()
