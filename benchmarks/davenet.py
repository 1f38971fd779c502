"""End-to-end audio's hot path: one DAVEnet training update (forward + backward over a batch of log-mel
windows), against this machine's GEMM rate measured in the same run (the physical limit: every FLOP of the
network is a matrix product) and against the Conv2d modules the authors' code runs (the peer's way).

The trainers' CPU path (DAVEnet.forward_frames) runs each (1, k) convolution as one GEMM over the unfolded
windows of time-major activations; `forward_conv` is the Conv2d network (oneDNN on a CPU, cuDNN on CUDA).
Usage: python benchmarks/davenet.py [--batch 48 --frames 100 --device cpu --repeats 3]
(--batch 48 --frames 100: learn_speech's update; MCN's own: --batch 16 --frames 1000 on a bigger machine)
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from features.davenet import DAVEnet  # noqa: E402


def best_time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up: allocator, oneDNN/cuDNN plans
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_size(device: str) -> int:
    """n of the n^3 limit GEMM: 2048 on a CPU; 8192 on a GPU, which a 2048^3 product leaves partly idle."""
    return 8192 if device.startswith("cuda") else 2048


def gemm_rate(device: str, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of an n^3 matrix product: the most this machine's matmul does in ``dtype``."""
    n = gemm_size(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats, device)


def forward_flops(model: nn.Module, batch: int, frames: int) -> float:
    """Multiply-adds x 2 of every convolution in one forward (BatchNorm, ReLU and adds are noise beside them)."""
    flops = []
    hooks = [m.register_forward_hook(lambda m, i, o: flops.append(2 * o.numel() * m.weight[0].numel()))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.forward_conv(torch.zeros(batch, 40, frames))
    for h in hooks:
        h.remove()
    return float(sum(flops))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    model = DAVEnet().to(dev).train()
    mel = torch.randn(args.batch, 40, args.frames, device=dev)
    # forward + backward: the weight gradients and the input gradients, each a GEMM of the forward's size
    flops = 3 * forward_flops(DAVEnet(), args.batch, args.frames)
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    peak = gemm_rate(dev, dtype, args.repeats)

    def update(forward):
        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and dtype == torch.bfloat16):
                forward(mel).float().mean().backward()
        return step

    print(f"DAVEnet update: {args.batch} windows x {args.frames} log-mel frames on {dev} "
          f"({torch.get_num_threads()} threads), {flops / 1e9:.0f} GFLOP forward + backward")
    print(f"GEMM {gemm_size(dev)}^3 {str(dtype).split('.')[-1]}: {peak / 1e9:.0f} GFLOP/s (the limit)")
    times = {}
    for name in ("forward_frames", "forward_conv"):
        times[name] = best_time(update(getattr(model, name)), args.repeats, dev)
        rate = flops / times[name]
        print(f"{name:15s} {times[name]:7.3f} s/update  {rate / 1e9:6.0f} GFLOP/s  {rate / peak:5.2f} of GEMM")
    print(f"forward_frames (GEMM path) vs forward_conv (the authors' Conv2d): "
          f"{times['forward_conv'] / times['forward_frames']:.2f}x faster; "
          f"the trainers use {'forward_frames' if dev == 'cpu' else 'forward_conv'} on {dev}")


if __name__ == "__main__":
    main()
