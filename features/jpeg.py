"""Cached frames: the decoded 1 fps frames themselves, each stored as a JPEG file (Pillow's libjpeg-turbo),
so a video tower can be trained later without decoding the video again.

Frames come as the decode gives them (short side --short-side, the HowTo100M recipe), optionally scaled
down to short side ``--jpeg-short-side`` (Pillow's antialiased bilinear); quality ``--jpeg-quality``
(4:2:0 chroma, Pillow's default). A row of the
group is one frame: its [start, end) byte range in the unit's ``bytes`` array (pipeline/store.py), so the
store's offsets, rates and clip slicing work as for any frame group.
"""
from __future__ import annotations

import io

import numpy as np

from .base import FRAMES, Extractor, Options


class JPEGFrames(Extractor):
    consumes = FRAMES
    runs_model = False
    rate = 1.0
    dim = 2  # a row: the frame's [start, end) in the unit's bytes
    dtype = object  # each frame's rows are one encoded file (bytes)

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        if not 1 <= opts.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality {opts.jpeg_quality}: choose 1..100")
        self.side = opts.jpeg_short_side or opts.short_side
        self.description = "decoded 1 fps RGB frames, one JPEG file per frame (Pillow)"
        self.params = dict(fps=1, selection="ffmpeg fps filter", rotation="display matrix applied",
                           decoder=opts.decoder, decode_short_side=opts.short_side, short_side=self.side,
                           resize="antialiased bilinear" if self.side < opts.short_side else None,
                           codec="jpeg", quality=opts.jpeg_quality, layout="rows: [start, end) into bytes")

    def __call__(self, frames) -> np.ndarray:
        """(B, H, W, 3) uint8 frames -> (B,) JPEG files (bytes)."""
        from PIL import Image

        out = np.empty(len(frames), dtype=object)
        for i, f in enumerate(frames):
            im = Image.fromarray(np.ascontiguousarray(f))
            if self.side < min(im.size):
                im = im.resize(scaled(im.size, self.side), Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=self.opts.jpeg_quality)
            out[i] = buf.getvalue()
        return out


def scaled(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(w, h) with the short side ``short``, the long side truncated (as the decode's scale filter)."""
    w, h = size
    return (short, int(h * short / w)) if w <= h else (int(w * short / h), short)
