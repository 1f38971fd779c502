"""Decode only the video packets a frame selection needs: exact, for H.264 with IDR keyframes.

At 1 fps, the frames after the last selected frame of a GOP (in decode order) up to the next IDR frame are
referenced by nothing that is selected (an IDR resets the decoder), so they need not be decoded. On
HowTo100M-like encodes (YouTube 360p, a keyframe every 2-3 s) that is about a fifth of the video decoding.

Which frames FFmpeg's ``fps`` filter picks depends only on their timestamps, which the demuxer gives before
any decoding. So packets are held back a GOP at a time (compressed: a few hundred KB); a copy of each
selection's ``fps`` filter is fed stand-in frames (4 pixels that encode the frame's index) carrying the same
timestamps in presentation order, and the stand-ins that come out name the frames the real filter will pick.
A GOP is settled once the next GOP is whole (its first frame in presentation order is then known), decoded up
to its last picked packet, and the rest is dropped. Dropping a frame that no output takes leaves the fps
filter's choice unchanged (frame i is output for every boundary in [pts_i, pts_next)), so the frames are
bit-identical to a full decode (tests/test_decode.py checks the real videos, B-frames and 3D streams).

Applies to H.264 in length-prefixed (avcC: mp4, mov, mkv) form with a distinct, increasing-per-GOP timestamp on
every packet. The last GOP is decoded whole (the filter's end-of-stream rule); anything unexpected (a packet
without a timestamp, GOPs that overlap in time, a GOP longer than ``MAX_HELD`` packets, a container that breaks
off) turns skipping off for the rest of the video.
"""
from __future__ import annotations

import av
import numpy as np

MAX_HELD = 1024  # packets of one GOP held back while waiting for the next IDR (about 34 s at 30 fps)


def nal_types(data: memoryview, length_size: int) -> list[int]:
    """H.264 NAL unit types of one length-prefixed (avcC) packet."""
    types, i, n = [], 0, len(data)
    while i + length_size < n:
        types.append(data[i + length_size] & 0x1F)
        i += length_size + int.from_bytes(data[i:i + length_size], "big")
    return types


def _length_size(stream) -> int | None:
    """avcC's NAL length size (bytes), or None where this stream's packets cannot be read that way."""
    extra = stream.codec_context.extradata or b""
    if stream.codec_context.name == "h264" and len(extra) > 4 and extra[0] == 1:
        return (extra[4] & 3) + 1
    return None


class _Picker:
    """A stand-in copy of one selection's fps filter: the frame indices it outputs."""

    def __init__(self, time_base, fps: float):
        self.time_base = time_base
        self.graph = av.filter.Graph()
        chain = [self.graph.add_buffer(width=4, height=1, format="gray", time_base=time_base),
                 self.graph.add("fps", f"fps={fps}"), self.graph.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        self.graph.configure()
        self.picked: set[int] = set()

    def push(self, index: int, pts: int, duration: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.frombuffer(np.uint32(index).tobytes(), np.uint8)[None], format="gray")
        frame.pts, frame.time_base, frame.duration = pts, self.time_base, duration
        self.graph.push(frame)
        self._pull()

    def finish(self) -> None:
        """The end of the stream: the filter's end-of-stream rule outputs its last frames."""
        self.graph.push(None)
        self._pull()

    def _pull(self) -> None:
        while True:
            try:
                out = self.graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            self.picked.add(int(np.frombuffer(out.to_ndarray()[0, :4].tobytes(), np.uint32)[0]))


class GopSkipper:
    """Sits between the demuxer and the video decoder: ``feed`` each video packet (and the final empty one)
    and decode the packets it hands back, in that order."""

    def __init__(self, stream, fps: list[float]):
        self.size = _length_size(stream)
        self.pickers = [_Picker(stream.time_base, f) for f in fps]
        self.gops: list[list] = [[]]  # settled-not-yet GOPs, decode order; the last one is still arriving
        self.index: dict[int, int] = {}  # pts -> index pushed to the pickers (held packets only)
        self.pushed = 0  # stand-in frames pushed
        self.last_pts: int | None = None
        self.skipped = 0  # packets never decoded

    @staticmethod
    def usable(stream) -> bool:
        return _length_size(stream) is not None

    def feed(self, packet) -> list:
        if packet.size == 0:  # the end: the last GOP settles the one before it, and is decoded whole
            return (self._gop_done() if self.size is not None and self.gops[-1] else []) + self.drain() + [packet]
        if self.size is None:
            return [packet]
        if packet.pts is None:
            return self.drain() + [packet]
        if packet.is_keyframe and self.gops[-1] and 5 in nal_types(memoryview(packet), self.size):
            out = self._gop_done()
            self.gops.append([packet])
            return out
        self.gops[-1].append(packet)
        return self.drain() if len(self.gops[-1]) > MAX_HELD else []

    def drain(self) -> list:
        """Every packet held, to decode whole; skipping stays off for the rest of the video."""
        self.size = None
        out = [p for g in self.gops for p in g]
        self.gops = [[]]
        return out

    def _gop_done(self) -> list:
        """The GOP that just completed goes to the pickers; the one before it is now settled."""
        gop = sorted(self.gops[-1], key=lambda p: p.pts)
        if (self.last_pts is not None and gop[0].pts <= self.last_pts) or len({p.pts for p in gop}) < len(gop):
            return self.drain()  # overlapping or repeated timestamps: no safe prediction
        for p in gop:
            self.index[p.pts] = self.pushed
            for picker in self.pickers:
                picker.push(self.pushed, p.pts, p.duration or 0)
            self.pushed += 1
        self.last_pts = gop[-1].pts
        if len(self.gops) < 2:
            return []
        settled = self.gops.pop(0)
        picked = set().union(*(p.picked for p in self.pickers))
        last = max((k for k, p in enumerate(settled) if self.index[p.pts] in picked), default=-1)
        self.skipped += len(settled) - (last + 1)
        for p in settled:
            for picker in self.pickers:
                picker.picked.discard(self.index[p.pts])
            del self.index[p.pts]
        return settled[:last + 1]
