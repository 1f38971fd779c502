"""Frame features: a torchvision ResNet (ResNet-152 by default), global-average-pooled, one row per frame.

As in the HowTo100M extractor: frames as its ffmpeg recipe gives them (pipeline/decode.py), /255, ImageNet
mean/std, the whole short-side-224 frame (no crop),
2048-d pooled output, L2-normalised per frame (stored as float16 by the pipeline).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import FRAMES, Extractor, Options
from .weights import load_into, load_state_dict, sha256, state_dict_sha256

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def frozen_torchvision(arch: str, opts: Options, group: str, flag: str) -> tuple[torch.nn.Module, str]:
    """A torchvision model with the user's state_dict (or random-init on purpose), and its checksum."""
    import torchvision  # here, not at the top: importing it takes 2 s (torch._dynamo), and the trainers, decoding
    # processes and loader workers import this module without building a torchvision model
    torch.manual_seed(0)  # random-init weights must be identical in every worker
    if opts.is_random(group):
        model = torchvision.models.get_model(arch, weights=None)
        return model, "random-init:" + state_dict_sha256(model.state_dict())
    path = opts.weights_for(group)
    state = load_state_dict(path, arch, flag)
    with torch.device("meta"):  # the weights replace every tensor: skip the random init
        model = torchvision.models.get_model(arch, weights=None)
    load_into(model, state, arch, path)
    return model, sha256(path)


class ResNetFrames(Extractor):
    consumes = FRAMES
    rate = 1.0
    preload = ("torchvision",)

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        model, self.weights_sha256 = frozen_torchvision(name, opts, name, f"--{name}-weights")
        model.fc = torch.nn.Identity()
        self.model = model.eval().to(opts.device, memory_format=torch.channels_last)
        self.weights, self.random_init = opts.weights_for(name), opts.is_random(name)
        self.dim = 2048 if name in ("resnet50", "resnet101", "resnet152") else 512
        self.description = f"torchvision.models.{name}, fc removed (global average pool, {self.dim}-d)"
        self.params = dict(fps=1, selection="ffmpeg fps filter", rotation="display matrix applied", decoder=opts.decoder,
                           short_side=opts.short_side, long_side="truncated", crop=None, interpolation="bicubic",
                           normalise="imagenet mean/std", l2_normalize=True, precision=opts.precision,
                           dtype="float16")

    @torch.inference_mode()
    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        out, dev, bs = [], self.opts.device, self.opts.batch_size
        for i in range(0, len(frames), bs):
            batch = frames[i:i + bs]
            if any(f.shape != batch[0].shape for f in batch):  # resolution change mid-video
                out.extend(self([f]) for f in batch)
                continue
            x = torch.from_numpy(np.stack(batch))
            x = (x.pin_memory().to(dev, non_blocking=True) if dev.startswith("cuda") else x)  # copy overlaps the last forward
            x = x.permute(0, 3, 1, 2).float().div_(255)
            x = ((x - MEAN.to(x.device)) / STD.to(x.device)).contiguous(memory_format=torch.channels_last)
            with self.autocast():
                y = self.model(x)
            out.append(torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
