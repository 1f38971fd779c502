"""`--decoder nvdec`: a video's frames decoded by the GPU's own video decoder (NVDEC, through PyNvVideoCodec).

Which frames: the same rule as the CPU path. FFmpeg's own ``fps`` filter is run on stand-in frames that carry the
demuxed packets' timestamps in presentation order (pipeline/gop.py's picker), so the choice is made before
anything is decoded (the CPU decodes only the first frame, for its size and display matrix: ``fps_picks``;
tests/test_decode_nvdec.py checks that the picked frames are exactly the ones `pipeline.decode` gives). NVDEC then decodes those frames
(and what they reference) into RGB in GPU memory; the display matrix is applied, each frame is scaled to the
short side on the GPU (bicubic, antialiased) and handed on, ``batch`` at a time, as the CPU path does. The audio
decodes on the CPU with PyAV. Those CPU parts (``prepare``: the picks and the audio) hold the GIL most of the time,
so `pipeline/part.py` runs them in CPU processes beside the NVDEC sessions, a few videos ahead.

The frames are not bit-identical to the CPU path's (another YUV->RGB conversion and another scaler), so the
decoder is recorded in each frame group's provenance (a store extracted with one decoder refuses another). A video
NVDEC cannot take (a codec it lacks, frame counts that disagree with the demuxer's) is decoded on the CPU, the
same frames picked (by `pipeline/part.py`'s CPU processes where ``prepare`` finds it out, so ahead), and counted in
the run's summary (``Decoded.cpu_fallback`` says why); where there is no NVDEC
at all, the run says so in one line and decodes on the CPU, recorded as pyav (``unavailable``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import av
import numpy as np

from .decode import (Decoded, DecodeFailure, FrameStream, _check_extent, _scaled_size, _stream_seconds, decode,
                     display_size, open_media, selections)
from .gop import _Picker

CHUNK = 32  # frames fetched from NVDEC at a time (full resolution on the GPU: 6 MB each at 1080p)
SCALE = 8  # frames scaled at a time (as float32: 25 MB each at 1080p)
CODECS = {"h264", "hevc", "av1", "vp9", "vp8", "mpeg2video", "mpeg4", "vc1", "mjpeg"}  # NVDEC's, on recent GPUs


def unavailable() -> str | None:
    """Why ``--decoder nvdec`` cannot run here (None: it can)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    try:
        import PyNvVideoCodec  # noqa: F401
    except ModuleNotFoundError:
        return "PyNvVideoCodec is not installed (pip install 'mmcache[nvdec]')"
    except Exception as e:  # the driver's video libraries (libnvcuvid, libnvidia-encode) failing to load
        return f"PyNvVideoCodec cannot load the driver's video libraries ({type(e).__name__}: {str(e)[:200]})"
    return None


def fps_picks(path: str, rates: list[float]) -> tuple[dict, list[list[int]]]:
    """What the fps filter at each of ``rates`` picks, as indices in presentation order, from the demuxed
    timestamps alone (only the first frame is decoded, for its size and display matrix). Returns (info, picks):
    info holds the frame count, codec, declared length, coded size, display size and rotation. Raises
    DecodeFailure for a file that cannot be opened or has no video, and _CpuOnly where NVDEC's frame order cannot
    be known (the CPU decoder then takes the video, and gives it its status)."""
    with open_media(path) as container:  # one pass: every packet's timestamp; the first frame decoded on the way
        if not container.streams.video:
            raise DecodeFailure("no_video", "file has no video stream")
        stream = container.streams.video[0]
        time_base, codec, declared = stream.time_base, stream.codec_context.name, _stream_seconds(stream)
        stamps, first, broken = [], None, None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    stamps.append((packet.pts, packet.duration or 0))
                if first is None and broken is None:  # the decoder's flush (an empty packet) may give it last
                    try:
                        first = next(iter(packet.decode()), None)
                    except av.FFmpegError as e:
                        broken = e
        except av.FFmpegError as e:  # the CPU decoder keeps what decodes before the break, and says so
            raise _CpuOnly(f"the container breaks off ({type(e).__name__}: {e})") from e
    if not stamps or any(pts is None for pts, _ in stamps):
        raise _CpuOnly("no video packets, or one without a timestamp")
    stamps.sort()
    if len({pts for pts, _ in stamps}) < len(stamps):
        raise _CpuOnly("repeated video timestamps")
    if broken is not None:
        raise _CpuOnly(f"the first frame does not decode ({type(broken).__name__}: {broken})")
    if first is None:
        raise _CpuOnly("no video frame decodes")
    pickers = [_Picker(time_base, r) for r in rates]
    for i, (pts, duration) in enumerate(stamps):
        for p in pickers:
            p.push(i, pts, duration)
    for p in pickers:
        p.finish()
    info = {"frames": len(stamps), "codec": codec, "declared": declared, "coded": (first.width, first.height),
            "size": display_size(first), "rotation": round(-first.rotation) % 360}
    return info, [sorted(p.picked) for p in pickers]


def _turn(x, theta: int):
    """The display matrix applied as the ffmpeg CLI's autorotate does (``x``: N, C, H, W)."""
    import torch

    if theta == 90:  # transpose=clock
        return torch.rot90(x, -1, (2, 3))
    if theta == 180:
        return torch.flip(x, (2, 3))
    if theta == 270:  # transpose=cclock
        return torch.rot90(x, 1, (2, 3))
    return x


def scale_gpu(x, size: tuple[int, int]) -> list[np.ndarray]:
    """(N, 3, H, W) uint8 where NVDEC put it -> N (height, width, 3) uint8 frames in RAM, bicubic, antialiased."""
    import torch
    import torch.nn.functional as F

    width, height = size
    out = []
    for a in range(0, len(x), SCALE):
        y = F.interpolate(x[a:a + SCALE].float(), size=(height, width), mode="bicubic", antialias=True,
                          align_corners=False)
        out.extend(y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy())
    return out


@dataclass
class Prepared:
    """The CPU's share of one NVDEC decode (picklable: made in a CPU process while NVDEC decodes other videos)."""
    key: tuple  # (frame rates, audio): what it was prepared for
    info: dict | None = None  # fps_picks' info
    chosen: list[list[int]] | None = None  # the frames each selection picks
    decoded: Decoded | None = None  # the audio decoded (frames none)
    cpu_only: str | None = None  # why NVDEC cannot take this video: the CPU decodes it whole
    failure: DecodeFailure | None = None  # the video's failure (no video stream, unreadable)


def picked_rates(frames: bool, clip_rates: list[float], fps: float = 1.0) -> list[float]:
    """The frame rates one decode picks for (``fps`` for the frame groups, then each clip group's): the key a
    ``prepare`` made ahead must match (`pipeline/part.py` prepares with this, ``decode_nvdec`` checks with it)."""
    return ([fps] if frames else []) + list(clip_rates)


def prepare(path: str, rates: list[float], audio: bool) -> Prepared:
    """Which frames, and the audio: everything of an NVDEC decode but NVDEC's."""
    key = (tuple(rates), audio)
    try:
        info, chosen = fps_picks(path, rates)
        if info["codec"] not in CODECS:
            raise _CpuOnly(f"codec {info['codec']} is not decoded by NVDEC")
        return Prepared(key, info, chosen, decode(path, frames=False, audio=True) if audio else Decoded(duration=0.0))
    except _CpuOnly as why:
        return Prepared(key, cpu_only=str(why))
    except DecodeFailure as f:
        return Prepared(key, failure=f)


def decode_nvdec(path: str | None, frames: bool = True, audio: bool = True, fps: float = 1.0,
                 short_side: int = 224, on_frames: Callable[[list[np.ndarray]], None] | None = None,
                 batch: int = 32, streams: list[FrameStream] = (), gpu: int = 0, prepared: Prepared | None = None,
                 **_) -> Decoded:
    """As `pipeline.decode.decode`, the frames decoded by NVDEC on GPU ``gpu``; ``prepared``: this video's
    ``prepare`` (made here when None). Raises DecodeFailure."""
    if not (frames or streams):
        return decode(path, frames=False, audio=audio)
    picks: list[FrameStream] = []
    wanted = picked_rates(frames, [s.fps for s in streams], fps)
    prep = prepared if prepared is not None and prepared.key == (tuple(wanted), audio) else prepare(path, wanted, audio)
    if prep.failure:
        raise prep.failure
    try:
        if prep.cpu_only:
            raise _CpuOnly(prep.cpu_only)
        out = prep.decoded
        picks = selections(out, frames, fps, short_side, on_frames, batch, streams)
        handed = _run_nvdec(path, prep.info, picks, prep.chosen, gpu)
    except _CpuOnly as why:
        if any(p.n for p in picks):  # frames already went on: a second decode would hand them twice
            raise DecodeFailure("decode_error", f"NVDEC broke off mid-video: {why}") from None
        out = decode(path, frames=frames, audio=audio, fps=fps, short_side=short_side, on_frames=on_frames,
                     batch=batch, streams=streams)
        out.cpu_fallback = str(why)
        return out
    out.n_frames = handed[0] if frames else 0
    if frames and out.truncated is None:  # a video stream that stops short of its declared length
        _check_extent(out, prep.info["declared"], None, fps, None)
    if out.duration <= 0:
        out.duration = out.n_frames / fps
    return out


class _CpuOnly(Exception):
    """This video goes to the CPU decoder (the reason is kept in ``Decoded.cpu_fallback``)."""


def _run_nvdec(path: str, info: dict, picks: list[FrameStream], chosen: list[list[int]], gpu: int) -> list[int]:
    """Decode the union of the picks on NVDEC a CHUNK at a time; each selection gets its frames, scaled, in
    order, ``batch`` at a time. Returns how many frames each selection was handed."""
    import PyNvVideoCodec as nvc
    import torch

    try:
        dec = nvc.SimpleDecoder(path, gpu_id=gpu, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    except Exception as e:  # a stream NVDEC refuses (profile, size): the CPU takes it
        raise _CpuOnly(f"NVDEC cannot open it: {e}") from e
    if len(dec) != info["frames"]:
        raise _CpuOnly(f"NVDEC counts {len(dec)} frames, the demuxer {info['frames']}")
    width, height = info["coded"]
    sets = [set(c) for c in chosen]
    sizes = [_scaled_size(*info["size"], p.short_side) for p in picks]
    pending: list[list[np.ndarray]] = [[] for _ in picks]
    wanted = sorted(set().union(*sets))
    for a in range(0, len(wanted), CHUNK):
        idx = wanted[a:a + CHUNK]
        got = [torch.from_dlpack(f) for f in dec.get_batch_frames_by_index(idx)]
        if len(got) != len(idx) or any(t.numel() != height * width * 3 for t in got):
            raise _CpuOnly(f"NVDEC gave {len(got)} frames of {[tuple(t.shape) for t in got[:1]]} for {len(idx)} "
                           f"of {height}x{width}x3")
        x = _turn(torch.stack([t.reshape(height, width, 3) for t in got]).permute(0, 3, 1, 2), info["rotation"])
        for k, pick in enumerate(picks):
            rows = [j for j, i in enumerate(idx) if i in sets[k]]
            if rows:
                pending[k].extend(scale_gpu(x[rows], sizes[k]))
            while len(pending[k]) >= pick.batch:
                _hand(pick, pending[k], pick.batch)
    for k, pick in enumerate(picks):
        if pending[k]:
            _hand(pick, pending[k], len(pending[k]))
    return [p.n for p in picks]


def _hand(pick: FrameStream, pending: list, n: int) -> None:
    done = pending[:n]
    del pending[:n]
    pick.sink(done)
    pick.n += len(done)
