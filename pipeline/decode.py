"""Decode a video once with PyAV: 1 fps RGB frames (short side 224) and 16 kHz mono audio.

Frame selection runs FFmpeg's own ``fps`` filter in-process, so frame k is the last source frame
before k + 0.5 s -- the same frames the HowTo100M extractor (ffmpeg ``fps=1``) fed its CNN.
Only the selected frames are converted to RGB (bilinear, aspect kept, no crop).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import av
import numpy as np

SAMPLE_RATE = 16000


class DecodeFailure(Exception):
    """A video that cannot give what was asked; ``status`` is recorded in the store."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Decoded:
    duration: float
    frames: list[np.ndarray] = field(default_factory=list)  # (224, W, 3) uint8 each, 1 per second
    audio: np.ndarray | None = None  # float32 mono at SAMPLE_RATE; None if no audio track
    audio_error: str | None = None  # why audio is None


MEDIA_DEMUXERS = ",".join(["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpeg",
                            "mpegts", "mpegvideo", "ogg", "wav", "mp3", "aac", "flac", "asf", "h264", "hevc", "m4v"])

def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if width <= height:
        return short_side, max(2, round(height * short_side / width))
    return max(2, round(width * short_side / height)), short_side


def decode(path: str | None, frames: bool = True, audio: bool = True, fps: float = 1.0,
           short_side: int = 224, threads: int = 1) -> Decoded:
    """Demux the file once, decoding only the streams asked for. Raises DecodeFailure."""
    if path is None or not os.path.isfile(path):
        raise DecodeFailure("missing", f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeFailure("decode_error", f"empty file: {path}")
    try:
        # local files only, media demuxers only: no playlist (hls, concat) can pull in URLs or other files
        container = av.open(path, options={"protocol_whitelist": "file", "format_whitelist": MEDIA_DEMUXERS})
    except av.FFmpegError as e:
        raise DecodeFailure("decode_error", f"cannot open: {e}") from e
    with container:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        if frames and vstream is None:
            raise DecodeFailure("no_video", "file has no video stream")
        out = Decoded(duration=_duration(container, vstream, astream))
        if audio and astream is None:
            out.audio_error = "no audio track"
        wanted = [s for s, on in ((vstream, frames), (astream, audio)) if s is not None and on]
        graph = resampler = None
        chunks: list[np.ndarray] = []
        if frames:
            vstream.thread_type = "AUTO"  # safe: we always decode to EOF
            vstream.codec_context.thread_count = threads
        try:
            for packet in container.demux(*wanted):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        graph = graph or _fps_graph(vstream, fps)
                        graph.push(frame)
                        _pull(graph, out.frames, short_side)
                    else:
                        resampler = resampler or av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
            if graph is not None:
                graph.push(None)
                _pull(graph, out.frames, short_side)
            if resampler is not None:
                chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise DecodeFailure("decode_error", f"{type(e).__name__}: {e}") from e
        if frames and not out.frames:
            raise DecodeFailure("empty", "no video frames decoded (zero duration?)")
        if audio and astream is not None:
            if chunks:
                out.audio = np.concatenate(chunks).astype(np.float32, copy=False)
            else:
                out.audio_error = "audio track decoded to no samples"
        if out.duration <= 0:
            out.duration = len(out.frames) / fps if out.frames else (
                len(out.audio) / SAMPLE_RATE if out.audio is not None else 0.0)
        return out


def _duration(container, vstream, astream) -> float:
    for s in (vstream, astream):
        if s is not None and s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
    return float(container.duration / av.time_base) if container.duration else 0.0


def _fps_graph(stream, fps: float):
    graph = av.filter.Graph()
    src = graph.add_buffer(template=stream)
    rate = graph.add("fps", f"fps={fps}")
    sink = graph.add("buffersink")
    src.link_to(rate)
    rate.link_to(sink)
    graph.configure()
    return graph


def _pull(graph, into: list[np.ndarray], short_side: int) -> None:
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        w, h = _scaled_size(frame.width, frame.height, short_side)
        into.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
