"""One task of `pipeline extract`: decode each video of a part once, hand each extractor what it consumes
(1 fps frames and dense clip frames stream as they decode; the waveform and log-mel per video), and commit
one unit per feature group. Statuses per video and group; one video's failure never loses the part.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from features.base import AUDIO, CLIP_FRAMES, FRAMES, LOGMEL, Options
from features.registry import extractor

from .decode import DecodeFailure, FrameStream, decode
from .decode_ffmpeg import decode_ffmpeg
from .store import USABLE, read_unit, write_part

CLIPS_PER_FORWARD = 4


@dataclass
class PartJob:
    store: str
    part: int
    videos: list[tuple[str, str]]  # (video_id, path)
    groups: list[str]
    opts: Options
    threads: int | None = None  # torch threads in the worker
    replace: bool = False


@dataclass
class Column:
    """One group's results for the part's videos, in order."""
    rows: list = field(default_factory=list)
    status: list = field(default_factory=list)
    error: list = field(default_factory=list)
    duration: list = field(default_factory=list)

    def put(self, rows, status="ok", error="", duration=0.0) -> None:
        self.rows.append(rows)
        self.status.append(status)
        self.error.append(error)
        self.duration.append(duration)


class Streamed:
    """Rows of the streaming (frame / clip) groups of one video, fed a batch at a time during the decode."""

    def __init__(self, exts: dict):
        self.exts, self.rows, self.errors = exts, {g: [] for g in exts}, {}

    def feed(self, groups: list[str], batch) -> None:
        for g in groups:
            if g not in self.errors:
                try:
                    self.rows[g].append(self.exts[g](batch).astype(np.float16))
                except Exception as e:  # an extractor bug or OOM: this group fails, the others go on
                    self.errors[g] = f"{type(e).__name__}: {e}"

    def clips(self, group: str, frames: list[np.ndarray]) -> None:
        """Dense frames -> non-overlapping windows of frames_per_clip (a shorter tail is dropped)."""
        t = self.exts[group].frames_per_clip
        n = len(frames) // t
        if n:
            self.feed([group], np.stack(frames[:n * t]).reshape(n, t, *frames[0].shape))

    def result(self, group: str) -> np.ndarray:
        if group in self.errors:
            raise RuntimeError(self.errors[group])
        rows = self.rows[group]
        return np.concatenate(rows) if rows else np.zeros((0, self.exts[group].dim), np.float16)


def _stored_logmel(job: PartJob):
    path = Path(job.store, "parts", f"p{job.part:06d}", "logmel")
    return read_unit(path)[0] if path.is_dir() else None


def run_part(job: PartJob) -> dict:
    import torch

    t0 = time.time()
    if job.threads:
        torch.set_num_threads(job.threads)
    exts = {g: extractor(g, job.opts) for g in job.groups}
    of = {kind: [g for g, e in exts.items() if e.consumes == kind] for kind in (FRAMES, CLIP_FRAMES, AUDIO, LOGMEL)}
    # log-mel consumers (DAVEnet) read the log-mel this run computes, or the stored one, or compute it unstored
    stored_mel = _stored_logmel(job) if of[LOGMEL] and "logmel" not in exts else None
    mel_maker = exts.get("logmel") or (extractor("logmel", job.opts) if of[LOGMEL] and stored_mel is None else None)
    need_audio = bool(of[AUDIO]) or mel_maker is not None
    results = {g: Column() for g in job.groups}
    read = decode if job.opts.decoder == "pyav" else partial(decode_ffmpeg, hwaccel=job.opts.hwaccel)
    seconds = 0.0
    for i, (vid, path) in enumerate(job.videos):
        streamed = Streamed(exts)
        streams = [FrameStream(exts[g].fps, exts[g].side, lambda b, g=g: streamed.clips(g, b),
                               exts[g].frames_per_clip * CLIPS_PER_FORWARD) for g in of[CLIP_FRAMES]]
        dec, failure = None, None
        if of[FRAMES] or streams or need_audio:
            try:
                dec = read(path or None, frames=bool(of[FRAMES]), audio=need_audio, short_side=job.opts.short_side,
                           on_frames=lambda b: streamed.feed(of[FRAMES], b), batch=job.opts.batch_size,
                           **({"streams": streams} if streams else {}))
            except DecodeFailure as f:
                failure = f
                if f.status == "no_video" and need_audio:  # audio-only file: the audio groups still work
                    try:
                        dec = read(path, frames=False, audio=True)
                    except DecodeFailure as f2:
                        failure = f2
        duration = dec.duration if dec else 0.0
        seconds += duration
        # a truncated file keeps its decodable part: status 'truncated', the reason, the decoded duration
        ok, note = ("truncated", dec.truncated) if dec is not None and dec.truncated else ("ok", "")
        mel = None

        def need(what_ok: bool, status: str, message: str) -> None:
            if not what_ok:
                raise DecodeFailure(failure.status, failure.message) if failure else DecodeFailure(status, message)

        for group in sorted(job.groups, key=lambda g: exts[g].consumes == LOGMEL):  # the log-mel before its users
            kind, r = exts[group].consumes, results[group]
            try:
                if kind in (FRAMES, CLIP_FRAMES):
                    need(dec is not None and dec.n_frames > 0, "no_video", "no frames")
                    r.put(streamed.result(group), ok, note, duration)
                    continue
                if kind == AUDIO and group != "logmel":
                    need(dec is not None and dec.audio is not None, "no_audio", dec.audio_error if dec else "")
                    r.put(exts[group](dec.audio), ok, note, duration)
                    continue
                if mel is None and stored_mel is not None:  # the log-mel's users, from the stored log-mel
                    off, duration = stored_mel["offsets"], float(stored_mel["duration"][i])
                    if stored_mel["status"][i] not in USABLE:
                        raise DecodeFailure(stored_mel["status"][i], stored_mel["error"][i])
                    ok, note = stored_mel["status"][i], stored_mel["error"][i]
                    mel = stored_mel["data"][off[i]:off[i + 1]].astype(np.float32)
                elif mel is None:
                    need(dec is not None, "missing", "not decoded")
                    need(dec.audio is not None, "no_audio", dec.audio_error or "no audio")
                    # rounded as stored, so DAVEnet sees the same input whether the log-mel was just
                    # computed or read back from the store (a resumed or incremental run)
                    mel = mel_maker(dec.audio).astype(np.float16).astype(np.float32)
                r.put(mel if group == "logmel" else exts[group](mel), ok, note, duration)
            except DecodeFailure as f:
                r.put(None, f.status, f.message, duration)
            except Exception as e:  # an extractor bug or OOM on one video must not lose the part
                r.put(None, "extract_error", f"{type(e).__name__}: {e}", duration)

    for group, r in results.items():
        write_part(job.store, job.part, group, r.rows, r.status, r.error, r.duration, exts[group].dim,
                   {"videos": [v for v, _ in job.videos]}, replace=job.replace)
    return {"part": job.part, "groups": job.groups, "videos": len(job.videos), "seconds": seconds,
            "status": {g: dict(Counter(r.status)) for g, r in results.items()}, "wall": time.time() - t0}
