"""The extractor protocol. A feature group is one small class: what it consumes from the single decode of a
video, its output (dim, rows per second), its provenance, and a batched call. `pipeline/part.py` composes the
selected extractors over one decode; `features/registry.py` names them.

    consumes     the call gets                                         rows
    frames       a batch of 1 fps RGB frames (short side --short-side)  one per frame (features or a JPEG)
    clip_frames  a batch of clips (B, frames_per_clip, side, W, 3)      one per clip of frames_per_clip at fps
    audio        one video's 16 kHz mono waveform (float32)             rate per second
    logmel       one video's log-mel (T, 40), as the store keeps it     rate per second
                 (the output of the group named `logmel`, computed or read back from the store)
    text         a list of captions (run once over the clip table)      one per clip
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES, CLIP_FRAMES, AUDIO, LOGMEL, TEXT = "frames", "clip_frames", "audio", "logmel", "text"


@dataclass(frozen=True)
class Options:
    """What extractors are built from (typed, hashable: sent to every worker, and the per-process cache key)."""
    weights: tuple[tuple[str, str], ...] = ()  # (group, path): a state_dict .pth, a .bin, a local HF folder
    random_init: tuple[str, ...] = ()  # groups run untrained on purpose (recorded in the store)
    device: str = "cpu"
    batch_size: int = 32  # frames (or clips) per forward
    short_side: int = 224  # 1 fps frames
    precision: str = "fp32"  # resolved (features/precision.py): fp32, bf16 or fp16; recorded per group
    decoder: str = "pyav"  # pyav (in-process), ffmpeg (the CLI through ffmpeg-python) or nvdec: recorded per frame group
    hwaccel: str | None = None  # ffmpeg -hwaccel (cuda, vaapi, ...), ffmpeg decoder only
    jpeg_quality: int = 90  # the frames group: JPEG quality 1..100
    jpeg_short_side: int = 0  # the frames group: short side of the stored frames (0: as decoded, --short-side)

    def weights_for(self, group: str) -> str | None:
        return dict(self.weights).get(group)

    def is_random(self, group: str) -> bool:
        return group in self.random_init


class Extractor:
    """One feature group. Subclasses set the attributes in __init__(name, opts) (loading their weights)
    and implement __call__; ``provenance()`` is what the store records and a rerun must match."""

    consumes: str
    dim: int
    rate: float | None  # rows per second (None: per clip)
    dtype = np.float16  # rows as stored; object: each row is one encoded file (bytes), see features/jpeg.py
    description: str
    params: dict
    weights: str | None = None
    weights_sha256: str | None = None
    random_init: bool = False
    runs_model = True  # its speed depends on --precision (the precision probe times the first such frame group)
    preload: tuple[str, ...] = ()  # what its build imports late (heavy): a local Dask worker imports it as it starts
    # clip_frames consumers: the dense decode they need
    fps: float = 0.0
    frames_per_clip: int = 0
    side: int = 0

    def __init__(self, name: str, opts: Options):
        self.name, self.opts = name, opts

    def autocast(self):
        """Around the model's forward: the run's precision (recorded in ``params.precision``)."""
        from .precision import autocast

        return autocast(self.opts.device, self.opts.precision)

    def provenance(self) -> dict:
        return dict(extractor=self.description, weights=self.weights, weights_sha256=self.weights_sha256,
                    random_init=self.random_init, dim=self.dim, rate=self.rate, params=self.params)

    def __call__(self, batch) -> np.ndarray:
        raise NotImplementedError
