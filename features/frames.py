"""Frame features: a torchvision ResNet (ResNet-152 by default), global-average-pooled, one row per frame.

As in the HowTo100M extractor: /255, ImageNet mean/std, the whole short-side-224 frame (no crop),
2048-d pooled output, L2-normalised per frame (stored as float16 by the pipeline).
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision

from .weights import load_into, load_state_dict, sha256, state_dict_sha256

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class FrameEncoder:
    def __init__(self, arch: str = "resnet152", weights: str | None = None, random_init: bool = False,
                 device: str = "cpu", batch_size: int = 32):
        torch.manual_seed(0)  # random-init weights must be identical in every worker
        if random_init:
            model = torchvision.models.get_model(arch, weights=None)
            self.checksum = "random-init:" + state_dict_sha256(model.state_dict())
        else:
            state = load_state_dict(weights, arch, f"--{arch}-weights")
            with torch.device("meta"):  # the weights replace every tensor: skip the random init
                model = torchvision.models.get_model(arch, weights=None)
            load_into(model, state, arch, weights)
            self.checksum = sha256(weights)
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.device, self.batch_size = device, batch_size
        self.dim = 2048 if arch in ("resnet50", "resnet101", "resnet152") else 512

    @torch.inference_mode()
    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.batch_size):
            batch = frames[i:i + self.batch_size]
            if any(f.shape != batch[0].shape for f in batch):  # resolution change mid-video
                out.extend(self([f]) for f in batch)
                continue
            x = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            x = ((x - MEAN.to(x.device)) / STD.to(x.device)).contiguous(memory_format=torch.channels_last)
            out.append(torch.nn.functional.normalize(self.model(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
