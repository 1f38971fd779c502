"""Which precision frozen extractors run in: a property of the machine, detected, never assumed.

``auto``: on CUDA, bf16 where the GPU supports it, else fp16; on a CPU, bf16 only where it is native
(avx512_bf16 or AMX in /proc/cpuinfo) *and* a short probe (a conv net forward) confirms it is faster than
fp32 -- on avx2-only CPUs bf16 autocast is emulated and several times slower; fp32 otherwise. The result is
recorded in each group's provenance, so a store never mixes precisions.
"""
from __future__ import annotations

import contextlib
import functools
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def bf16_faster_on_cpu() -> bool:
    """Native bf16 on this CPU, and a ResNet-sized conv stack really runs faster in it (best of 3 each)."""
    if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return False
    net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)]).eval()
    x = torch.randn(8, 64, 56, 56)

    def best(dtype):
        times = []
        with torch.inference_mode(), autocast("cpu", dtype):
            for _ in range(4):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
        return min(times[1:])
    return best("bf16") < 0.8 * best("fp32")


def resolve(precision: str, device: str) -> str:
    """``auto`` -> fp32, bf16 or fp16 for this machine; an explicit choice is checked."""
    cuda = device.startswith("cuda")
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bf16_faster_on_cpu() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and not cuda:
        raise ValueError("--precision fp16 needs --device cuda (CPUs run bf16 or fp32)")
    return precision


def autocast(device: str, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=DTYPES[precision])
