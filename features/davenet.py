"""ResDAVEnet (AVLnet/MCN model_davenet.py): log-mel (B, 40, T) -> (B, 1024, ceil(T/16)).

Used two ways: frozen, as a feature extractor in the pipeline (weights from a checkpoint), and trained
end to end on cached spectrograms by the trainers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import LOGMEL, Extractor, Options
from .weights import load_into, load_state_dict, sha256, state_dict_sha256


class SpeechBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, (1, 9), stride=(1, stride), padding=(0, 4), bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, (1, 9), padding=(0, 4), bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=(1, stride), bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The same block on (B, T, C) frames, each convolution one GEMM (``conv_frames``)."""
        out = torch.relu(bn_frames(self.bn1, conv_frames(self.conv1, x)))
        out = bn_frames(self.bn2, conv_frames(self.conv2, out))
        if self.downsample is not None:
            x = bn_frames(self.downsample[1], conv_frames(self.downsample[0], x))
        return torch.relu(out + x)


def conv_frames(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A (1, k) Conv2d over time (no bias) on (B, T, C_in) frames -> (B, T', C_out), as one GEMM over the
    unfolded windows. On a CPU this trains DAVEnet 1.7x faster than the convolution kernels (oneDNN's (1, 9)
    backward runs at ~30% of this machine's GEMM rate; benchmarks/davenet.py)."""
    return _WindowGEMM.apply(x, conv.weight, conv.stride[1], conv.padding[1])


def _windows(x: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """(B, T, C) -> the (B * T', C * k) matrix of its zero-padded windows (im2col)."""
    windows = F.pad(x, (0, 0, pad, pad)).unfold(1, k, stride)  # (B, T', C, k), a view
    return windows.reshape(-1, windows.shape[2] * k)


class _WindowGEMM(torch.autograd.Function):
    """conv_frames' product, keeping its input for the backward pass rather than the k-times larger window
    matrix (rebuilt there, a copy): a backward's memory stays the Conv2d network's (1.2 GB for 48 x 1000 frames,
    2.6 GB keeping the windows)."""

    @staticmethod
    def forward(ctx, x, weight, stride: int, pad: int):
        ctx.save_for_backward(x, weight)
        ctx.conf = stride, pad
        cols = _windows(x, weight.shape[-1], stride, pad)
        return (cols @ weight.reshape(len(weight), -1).t()).view(len(x), -1, len(weight))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (stride, pad), k = ctx.conf, weight.shape[-1]
        grad = grad.reshape(-1, len(weight))
        grad_w = (grad.t() @ _windows(x, k, stride, pad)).view_as(weight) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:  # the windows' gradient summed back onto the frames they came from
            b, t, c = x.shape
            cols = (grad @ weight.reshape(len(weight), -1)).view(b, -1, c, k)
            grad_x = torch.ops.aten.unfold_backward(cols, (b, t + 2 * pad, c), 1, k, stride)[:, pad:pad + t]
        return grad_x, grad_w, None, None


def bn_frames(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm2d on (B, T, C) frames (statistics over B and T, as over (B, C, 1, T)), through the module
    itself so its running statistics and batch count update as they would."""
    return bn(x.reshape(-1, x.shape[-1], 1, 1)).view(x.shape)


class DAVEnet(nn.Module):
    def __init__(self, n_mels: int = 40, widths=(128, 256, 512, 1024), blocks: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], (n_mels, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, inplanes = [], widths[0]
        for width in widths:
            stage = [SpeechBasicBlock(inplanes, width, stride=2)]
            stage += [SpeechBasicBlock(width, width) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.forward_frames(mel) if mel.device.type == "cpu" else self.forward_conv(mel)

    def forward_conv(self, mel: torch.Tensor) -> torch.Tensor:
        """The network as the authors' code runs it (Conv2d modules): CUDA's path, cuDNN's kernels."""
        x = torch.relu(self.bn1(self.conv1(mel.unsqueeze(1))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.squeeze(2)

    def forward_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """``forward_conv``'s function with time-major activations and GEMM convolutions (float64 agrees to
        1e-13): the CPU path."""
        x = mel.transpose(1, 2) @ self.conv1.weight.reshape(len(self.conv1.weight), -1).t()  # (B, T, 128)
        x = torch.relu(bn_frames(self.bn1, x))
        for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
            x = block.forward_frames(x)
        return x.transpose(1, 2).contiguous()


class DaveNetAudio(Extractor):
    """Frozen DAVEnet over a whole video's log-mel: (T, 40) -> (ceil(T/16), 1024)."""
    consumes = LOGMEL
    rate = 100.0 / 16
    description = "ResDAVEnet over the log-mel spectrogram (frozen)"

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        torch.manual_seed(0)
        self.weights, self.random_init = opts.weights_for(name), opts.is_random(name)
        if self.random_init:
            model = DAVEnet()
            self.weights_sha256 = "random-init:" + state_dict_sha256(model.state_dict())
        else:
            state = load_state_dict(self.weights, "DAVEnet", "--davenet")
            with torch.device("meta"):
                model = DAVEnet()
            load_into(model, state, "DAVEnet", self.weights)
            self.weights_sha256 = sha256(self.weights)
        self.model, self.dim = model.eval().to(opts.device), model.dim
        self.params = dict(input="logmel", precision=opts.precision, dtype="float16")

    @torch.inference_mode()
    def __call__(self, mel: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(mel.T, dtype=np.float32))[None].to(self.opts.device)
        with self.autocast():
            y = self.model(x)
        return y[0].T.float().cpu().numpy()
