"""The ffmpeg-CLI decoder (``--decoder ffmpeg``): the HowTo100M extractor's recipe run through ffmpeg-python.

    ffmpeg [-hwaccel X] -i VIDEO -vf fps=1,scale=W:H -f rawvideo -pix_fmt rgb24 pipe:1   (frames)
                                 -ac 1 -ar 16000 -f f32le pipe:N                         (audio, same process)

W:H keep the aspect with the short side at --short-side and the long side truncated, as that extractor
computes them. One ffmpeg process decodes each file once; frames stream from its stdout ``batch`` at a time,
the waveform from a second pipe. The binary is imageio-ffmpeg's (a pip package) or ``ffmpeg`` on PATH.
PyAV still reads the header (size, rotation, durations) without decoding the stream, with the same
local-file, media-demuxer-only whitelist; ffmpeg is told ``-protocol_whitelist file``.
Gives the 1 fps frames and the audio; dense clip frames (3D groups) need ``--decoder pyav``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Callable

import av
import numpy as np

from features.optional import require

from .decode import (SAMPLE_RATE, DecodeFailure, Decoded, _check_extent, _duration, _scaled_size, _stream_seconds,
                     display_size, open_media)


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's static binary, else ffmpeg on PATH; a clear error when neither exists."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe:
            return exe
    raise FileNotFoundError("--decoder ffmpeg needs an ffmpeg binary: pip install imageio-ffmpeg, or put ffmpeg on "
                            "PATH (or use --decoder pyav)")


def _probe(path: str) -> dict:
    """Size after rotation, durations and the audio track, from the header and the first frame (PyAV)."""
    with open_media(path) as container:
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        info = dict(duration=_duration(container, v, a), video_s=_stream_seconds(v) if v else None,
                    audio_s=_stream_seconds(a) if a else None, has_audio=a is not None, size=None)
        if v is not None:
            try:
                first = next(container.decode(v))
            except (StopIteration, av.FFmpegError):
                first = None
            if first is not None:
                info["size"] = display_size(first)
        return info


def decode_ffmpeg(path: str | None, frames: bool = True, audio: bool = True, fps: float = 1.0,
                  short_side: int = 224, on_frames: Callable[[list[np.ndarray]], None] | None = None,
                  batch: int = 32, hwaccel: str | None = None) -> Decoded:
    """As ``decode.decode`` (1 fps frames and audio), through the ffmpeg CLI. Raises DecodeFailure."""
    ffmpeg = require("ffmpeg", "--decoder ffmpeg")

    info = _probe(path)  # missing, empty and unopenable files fail here, as with the in-process decoder
    if frames and info["size"] is None:
        raise DecodeFailure("no_video", "file has no video stream" if info["video_s"] is None else "no frame decodes")
    out = Decoded(duration=info["duration"])
    if audio and not info["has_audio"]:
        out.audio_error = "no audio track"
    src = ffmpeg.input(path, protocol_whitelist="file", **({"hwaccel": hwaccel} if hwaccel else {}))
    outputs, fds = [], ()
    if frames:
        w, h = _scaled_size(*info["size"], short_side)
        outputs.append(src.video.filter("fps", fps=fps).filter("scale", w, h)
                       .output("pipe:1", format="rawvideo", pix_fmt="rgb24"))
    read_fd = None
    if audio and info["has_audio"]:
        read_fd, write_fd = os.pipe()
        fds = (write_fd,)
        outputs.append(src.audio.output(f"pipe:{write_fd}", format="f32le", ac=1, ar=SAMPLE_RATE))
    if not outputs:
        return out
    cmd = ffmpeg.merge_outputs(*outputs).global_args("-nostdin", "-loglevel", "error").compile(cmd=ffmpeg_exe())
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=fds)
    for fd in fds:
        os.close(fd)
    chunks, err = [], []
    readers = [threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    if read_fd is not None:
        def read_audio():
            with os.fdopen(read_fd, "rb") as f:
                while block := f.read(1 << 20):
                    chunks.append(block)
        readers.append(threading.Thread(target=read_audio, daemon=True))
    for t in readers:
        t.start()
    sink = on_frames or out.frames.extend
    if frames:
        size, pending = w * h * 3, []
        while (raw := proc.stdout.read(size)) and len(raw) == size:  # a frame at a time: RAM is one batch
            pending.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
            if len(pending) == batch or on_frames is None:
                sink(pending)
                out.n_frames += len(pending)
                pending = []
        if pending:
            sink(pending)
            out.n_frames += len(pending)
    proc.stdout.read()
    rc = proc.wait()
    for t in readers:
        t.join()
    broke = (err[0].decode(errors="replace").strip().splitlines() or ["ffmpeg failed"])[-1] if rc else None
    if frames and not out.n_frames:
        raise DecodeFailure("decode_error" if broke else "empty", f"ffmpeg: {broke}" if broke else "no video frames")
    if audio and info["has_audio"]:
        data = b"".join(chunks)
        if data:
            out.audio = np.frombuffer(data, np.float32).copy()
        else:
            out.audio_error = f"audio track decoded to no samples{f': {broke}' if broke else ''}"
    _check_extent(out, info["video_s"] if frames else None, info["audio_s"] if audio else None, fps, broke)
    return out
