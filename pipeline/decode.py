"""Decode a video once with PyAV: 1 fps RGB frames (short side 224) and 16 kHz mono audio.

Frame selection runs FFmpeg's own ``fps`` filter in-process, so frame k is the last source frame
before k + 0.5 s -- the same frames the HowTo100M extractor (ffmpeg ``fps=1``) fed its CNN.
A display matrix (phone videos) is applied first, as the ffmpeg CLI's autorotate does.
Only the selected frames are scaled (short side given, long side truncated, bicubic) and converted to RGB,
by the same filters the CLI runs: the frames are bit-identical to the ffmpeg CLI recipe's.

Frames can be handed to a callback ``batch`` at a time (``on_frames``), so memory per video is bounded
whatever its length; audio is kept whole (64 KB per second: the log-mel front end normalises by the
whole video). A file that breaks off (truncated download, damaged tail) keeps what decoded before the
break, and says so in ``Decoded.truncated``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import av
import numpy as np

from .gop import GopSkipper

SAMPLE_RATE = 16000


class DecodeFailure(Exception):
    """A video that cannot give what was asked; ``status`` is recorded in the store."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    def __reduce__(self):  # picklable: decode workers send it back
        return DecodeFailure, (self.status, self.message)


@dataclass
class Decoded:
    duration: float
    frames: list[np.ndarray] = field(default_factory=list)  # (224, W, 3) uint8 each, 1 per second
    audio: np.ndarray | None = None  # float32 mono at SAMPLE_RATE; None if no audio track
    audio_error: str | None = None  # why audio is None
    n_frames: int = 0  # frames selected (also when they went to ``on_frames`` instead of ``frames``)
    truncated: str | None = None  # the file broke off: what decoded, of how much, and why (duration = decoded)
    skipped: int = 0  # video packets never decoded: no selected frame needs them (pipeline/gop.py)
    cpu_fallback: str | None = None  # --decoder nvdec: why this video was decoded on the CPU instead


MEDIA_DEMUXERS = ",".join(["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpeg",
                            "mpegts", "mpegvideo", "ogg", "wav", "mp3", "aac", "flac", "asf", "h264", "hevc", "m4v"])

def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the long side truncated, as the HowTo100M
    extractor computes it (``int(h * size / w)``)."""
    if width <= height:
        return short_side, max(2, int(height * short_side / width))
    return max(2, int(width * short_side / height)), short_side


def display_size(frame) -> tuple[int, int]:
    """(width, height) of a frame as shown, after its display matrix's rotation."""
    turned = round(-frame.rotation) % 180 == 90
    return (frame.height, frame.width) if turned else (frame.width, frame.height)


def open_media(path: str | None):
    """The file opened for demuxing: a missing, empty or unopenable file is a DecodeFailure. Local files only,
    media demuxers only: no playlist (hls, concat) can pull in URLs or other files."""
    if path is None or not os.path.isfile(path):
        raise DecodeFailure("missing", f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeFailure("decode_error", f"empty file: {path}")
    try:
        return av.open(path, options={"protocol_whitelist": "file", "format_whitelist": MEDIA_DEMUXERS})
    except av.FFmpegError as e:
        raise DecodeFailure("decode_error", f"cannot open (truncated or not a media file?): {e}") from e


@dataclass
class FrameStream:
    """Frames picked at ``fps`` by FFmpeg's fps filter, scaled to ``short_side``, handed to ``sink``
    ``batch`` at a time as they decode (so only a batch is ever held)."""
    fps: float
    short_side: int
    sink: Callable[[list[np.ndarray]], None]
    batch: int = 32
    n: int = 0  # frames handed over
    graph: object = None
    pending: list = field(default_factory=list)

    def push(self, frame, stream) -> None:
        if self.graph is None:
            self.graph = _fps_graph(stream, self.fps, frame.rotation,
                                    _scaled_size(*display_size(frame), self.short_side))
        self.graph.push(frame)
        self.pull()

    def pull(self, final: bool = False) -> None:
        if final and self.graph is not None:
            self.graph.push(None)
        if self.graph is not None:
            _pull(self.graph, self.pending)
        while self.pending and (len(self.pending) >= self.batch or final):
            done = self.pending[:self.batch]
            self.sink(done)
            self.n += len(done)
            del self.pending[:len(done)]


def selections(out: Decoded, frames: bool, fps: float, short_side: int, on_frames, batch: int,
               streams) -> list[FrameStream]:
    """The frame selections of one decode: the 1 fps frames (to ``on_frames`` ``batch`` at a time, or kept in
    ``out.frames``) if asked for, then ``streams``."""
    return ([FrameStream(fps, short_side, on_frames or out.frames.extend, batch if on_frames else 1)]
            if frames else []) + list(streams)


def decode(path: str | None, frames: bool = True, audio: bool = True, fps: float = 1.0,
           short_side: int = 224, threads: int = 1,
           on_frames: Callable[[list[np.ndarray]], None] | None = None, batch: int = 32,
           streams: list[FrameStream] = (), skip_unused: bool = True) -> Decoded:
    """Demux the file once, decoding only the streams asked for. Raises DecodeFailure.

    ``frames``: frames at ``fps`` to ``on_frames`` ``batch`` at a time (without it: kept in
    ``Decoded.frames``). ``streams``: more frame selections from the same decode (dense clip frames).
    ``skip_unused``: never decode the packets no selection needs (pipeline/gop.py; the frames are identical)."""
    with open_media(path) as container:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        video = frames or bool(streams)
        if video and vstream is None:
            raise DecodeFailure("no_video", "file has no video stream")
        out = Decoded(duration=_duration(container, vstream, astream))
        if audio and astream is None:
            out.audio_error = "no audio track"
        picks = selections(out, frames, fps, short_side, on_frames, batch, streams)
        wanted = [s for s, on in ((vstream, video), (astream, audio)) if s is not None and on]
        resampler = None
        chunks: list[np.ndarray] = []
        if video:
            vstream.thread_type = "AUTO"  # safe: we always decode to EOF
            vstream.codec_context.thread_count = threads
        broke = None
        skip = video and skip_unused and GopSkipper.usable(vstream)
        skipper = GopSkipper(vstream, [p.fps for p in picks]) if skip else None
        packets = container.demux(*wanted)

        def run(packet) -> None:
            nonlocal broke, resampler
            try:
                decoded = packet.decode()
            except av.FFmpegError as e:  # a damaged or partial packet: skipped, as the ffmpeg CLI does
                broke = broke or f"{type(e).__name__}: {e}"
                return
            for frame in decoded:
                if isinstance(frame, av.VideoFrame):
                    for pick in picks:
                        pick.push(frame, vstream)
                else:
                    # out in 1 s frames: the same samples, a third fewer Python calls (audio decode 35 -> 24 ms
                    # for an 18 s video)
                    resampler = resampler or av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE,
                                                               frame_size=SAMPLE_RATE)
                    chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))

        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:  # the container breaks off: keep what came before
                broke = broke or f"{type(e).__name__}: {e}"
                break
            for p in skipper.feed(packet) if skipper is not None and packet.stream is vstream else (packet,):
                run(p)
        for p in skipper.drain() if skipper is not None else ():  # held when the container broke off
            run(p)
        for pick in picks:
            pick.pull(final=True)
        if resampler is not None:
            chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
        out.n_frames = picks[0].n if picks else 0
        out.skipped = skipper.skipped if skipper is not None else 0
        if video and not out.n_frames:
            raise DecodeFailure("decode_error" if broke else "empty",
                                f"no video frame decodes: {broke}" if broke else "no video frames decoded (zero duration?)")
        if audio and astream is not None:
            if chunks:
                out.audio = np.concatenate(chunks).astype(np.float32, copy=False)
                declared = round(_stream_seconds(astream) * SAMPLE_RATE)
                if 0 < declared < len(out.audio) <= declared + 2048:  # the encoder's end padding, past the
                    out.audio = out.audio[:declared]  # stream's declared duration: the ffmpeg CLI drops it too
            else:
                out.audio_error = f"audio track decoded to no samples{f': {broke}' if broke else ''}"
        _check_extent(out, _stream_seconds(vstream) if video else None,
                      _stream_seconds(astream) if audio and astream else None, picks[0].fps if picks else 1.0, broke)
        return out


def _check_extent(out: Decoded, video_s: float | None, audio_s: float | None, fps: float, broke: str | None) -> None:
    """Mark the video truncated (and set ``out.duration`` to what decoded) if a stream stops well before the
    duration its header declares (``video_s`` / ``audio_s``: 0 unknown, None not decoded; more than 1.5 s + 2%
    short), or broke off with an error where no duration is declared. Damaged packets inside a file that
    decodes to its end are skipped, as the ffmpeg CLI does."""
    extents = []
    if video_s is not None:
        extents.append((out.n_frames / fps, video_s))
    if audio_s is not None and out.audio is not None:
        extents.append((len(out.audio) / SAMPLE_RATE, audio_s))
    decoded = min((got for got, _ in extents), default=0.0)
    short = [(got, want) for got, want in extents if want and got < want - 1.5 - 0.02 * want]
    if short or (broke and not any(want for _, want in extents)):
        got, want = short[0] if short else (decoded, 0.0)
        out.truncated = (f"truncated: decoded {got:.1f} s of {f'{want:.1f} s' if want else 'an unknown length'}"
                         + (f" ({broke})" if broke else ""))
        out.duration = decoded
    elif out.duration <= 0:
        out.duration = decoded


def _stream_seconds(stream) -> float:
    return float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0


def _duration(container, vstream, astream) -> float:
    for s in (vstream, astream):
        if s is not None and s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
    return float(container.duration / av.time_base) if container.duration else 0.0


def _fps_graph(stream, fps: float, rotation: int, size: tuple[int, int]):
    """The ffmpeg CLI's chain, in-process: buffer -> [autorotate: transpose / hflip+vflip] -> fps ->
    scale=W:H (bicubic, the scale filter's default) -> rgb24 -> sink. Frames come out bit-identical to
    ``ffmpeg -vf fps=F,scale=W:H -pix_fmt rgb24`` (tests/test_decode.py checks it on the real videos)."""
    graph = av.filter.Graph()
    chain = [graph.add_buffer(template=stream)]
    theta = round(-rotation) % 360  # av_display_rotation_get is counter-clockwise; the CLI negates it
    for name, arg in {90: [("transpose", "clock")], 180: [("hflip", ""), ("vflip", "")],
                      270: [("transpose", "cclock")]}.get(theta, []):
        chain.append(graph.add(name, arg))
    chain += [graph.add("fps", f"fps={fps}"), graph.add("scale", f"{size[0]}:{size[1]}"),
              graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def _pull(graph, into: list[np.ndarray]) -> None:
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        into.append(frame.to_ndarray(format="rgb24"))
