"""Which precision (and CPU batch) frozen extractors run in: a property of the machine, measured, never assumed.

``auto``: on CUDA, bf16 where the GPU supports it, else fp16. On a CPU, fp32 unless bf16 is native (avx512_bf16
or AMX in /proc/cpuinfo) *and* a probe finds it faster: the run's own frame model, at the thread count each
worker will use and the batch it will run, fp32 against bf16 autocast. Both conditions matter and differ between
machines: emulated bf16 (avx2) is several times slower, and on one AVX-512 Xeon a 1-thread ResNet-152 ran bf16
at 0.69x fp32 where 2 threads ran it 2.1x faster. The probe takes a few seconds, so its figures are kept per
machine, model, threads and batch in ``$XDG_CACHE_HOME/mmcache/probe.json`` (``MMCACHE_PROBE_CACHE`` names
another file); the store records the chosen precision in each group's provenance and the figures in its attrs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# frames per forward on a CPU. fp32: 32, where oneDNN's fp32 kernels give every row bit for bit what a batch of 32
# gives (below 16 the last bit moves); bf16: 8 (ResNet-152, 2-vCPU Xeon with AMX, 2026-12-07: 13.5 frames/s at
# batch 8 against 10.2 at 32 on 1 thread, 25.6 against 21.5 on 2; bf16 rows are bit-identical at every batch)
CPU_BATCH = {"fp32": 32, "bf16": 8}
GPU_BATCH = 32
FASTER = 0.8  # bf16 is chosen when a bf16 forward takes at most this fraction of an fp32 one


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cache_file() -> Path:
    if os.environ.get("MMCACHE_PROBE_CACHE"):
        return Path(os.environ["MMCACHE_PROBE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "mmcache", "probe.json")


def _probe_input(ext, batch: int) -> np.ndarray:
    """A batch shaped as the run will feed it: frames of the short side at 4:3, or clips of frames_per_clip."""
    side = ext.side or ext.opts.short_side
    rng = np.random.default_rng(0)
    if ext.frames_per_clip:
        return rng.integers(0, 256, (batch, ext.frames_per_clip, side, side * 4 // 3, 3), dtype=np.uint8)
    return rng.integers(0, 256, (batch, side, side * 4 // 3, 3), dtype=np.uint8)


def frames_per_second(build, batch: int, threads: int) -> float:
    """Items per second of one extractor built by ``build()`` at ``threads`` torch threads, one forward of
    ``batch`` after a warm-up forward of the same shape (oneDNN makes its kernels per shape)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ext = build()
        x = _probe_input(ext, batch)
        ext(x)
        t = time.perf_counter()
        ext(x)
        return batch / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def probe_cpu(group: str, build, threads: int, batch: int = CPU_BATCH["bf16"], before=None) -> dict:
    """fp32 against bf16 for ``group``'s model (``build(precision)`` makes it) at ``threads`` threads: the
    figures, the choice and where they came from (measured now, or this machine's cache). ``before()`` is called
    before measuring (not for a cached answer)."""
    key = "|".join([cpu_name(), hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12],
                    f"{os.cpu_count()} cpus", f"torch {torch.__version__}", group, f"{threads} threads",
                    f"batch {batch}"])
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return {**cache[key], "source": f"measured earlier on this machine ({path})"}
    if before is not None:
        before()
    rates = {p: round(frames_per_second(lambda p=p: build(p), batch, threads), 2) for p in ("fp32", "bf16")}
    found = {"group": group, "threads": threads, "batch": batch, "frames_per_s": rates,
             "chosen": "bf16" if rates["fp32"] < FASTER * rates["bf16"] else "fp32",
             "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:  # a cache that cannot be written costs the next run its probe, nothing else
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**cache, key: found}, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return {**found, "source": "measured now"}


def resolve(precision: str, device: str, probe=None) -> tuple[str, dict]:
    """``auto`` -> (fp32, bf16 or fp16, why); an explicit choice is checked. ``probe()`` runs the CPU probe
    (see probe_cpu); without one, or without native bf16, a CPU runs fp32."""
    cuda = device.startswith("cuda")
    if precision == "auto":
        if cuda:
            return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), {"source": "the GPU's support"}
        if not native_bf16():
            return "fp32", {"source": "no avx512_bf16 or AMX in /proc/cpuinfo: bf16 would be emulated"}
        if probe is None:
            return "fp32", {"source": "no frame model to probe"}
        found = probe()
        return found["chosen"], found
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and not cuda:
        raise ValueError("--precision fp16 needs --device cuda (CPUs run bf16 or fp32)")
    return precision, {"source": "given"}


def default_batch(precision: str, device: str) -> int:
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH.get(precision, 32)


def autocast(device: str, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=DTYPES[precision])
