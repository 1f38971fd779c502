"""One task of `pipeline extract`: decode each video of a part once, hand each extractor what it consumes
(1 fps frames and dense clip frames stream as they decode; the waveform and log-mel per video), and commit
one unit per feature group. Statuses per video and group; one video's failure never loses the part.

Videos decode in a thread of this process (the default on CPU: one task per core; the decode overlaps the
forward, as PyAV and torch release the GIL), or in ``decode_workers`` DataLoader processes (the default on CUDA,
as the HowTo100M extractor does) while this process runs the models; there each process takes the next video as
it finishes one, longest first, and its frames are taken as they come. Either way the frame models get full
batches drawn from several videos (``Batcher``), and only a batch is held. With ``--decoder nvdec`` the NVDEC
sessions are threads of this process, and the CPU's share of each decode (which frames, the audio: it holds the
GIL) is made a few videos ahead in as many CPU processes (``_Ahead``); those processes also decode whole the videos
NVDEC cannot take (``_decode_whole``).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset

from features.base import AUDIO, CLIP_FRAMES, FRAMES, LOGMEL, Options
from features.registry import extractor

from .decode import DecodeFailure, FrameStream, decode
from .decode_ffmpeg import decode_ffmpeg
from .decode_nvdec import Prepared, decode_nvdec, picked_rates, prepare, unavailable
from .processes import forkserver
from .store import USABLE, read_unit, write_part

CLIPS_PER_FORWARD = 4
NVDEC_SESSIONS = 4  # --decoder nvdec: videos decoded at once per part (an H100 has 7 NVDEC engines)


@dataclass
class PartJob:
    store: str
    part: int
    videos: list[tuple[str, str]]  # (video_id, path)
    groups: list[str]
    opts: Options
    threads: int | None = None  # torch threads in the worker
    replace: bool = False
    decode_workers: int | None = None  # decoding processes feeding this task's models; None: 0 on CPU, cores // GPUs on CUDA


@dataclass
class Column:
    """One group's results for the part's videos, by video index (videos finish out of order with decode workers)."""
    n: int
    rows: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)
    duration: dict = field(default_factory=dict)

    def put(self, i: int, rows, status="ok", error="", duration=0.0) -> None:
        self.rows[i], self.status[i], self.error[i], self.duration[i] = rows, status, error, duration

    def ordered(self, what: dict) -> list:
        return [what[i] for i in range(self.n)]


class Batcher:
    """Rows of the frame and clip groups for every video of the part. Frames (or clips) are fed as they decode,
    and a group's forward takes ``batch`` of them, from several videos when one ends mid-batch (so a GPU model
    always gets full batches); one frame size per forward. Only a batch per group and size is ever held."""

    def __init__(self, exts: dict, batch: int):
        self.exts = exts
        self.size = {g: CLIPS_PER_FORWARD if e.consumes == CLIP_FRAMES else batch for g, e in exts.items()}
        self.pending: dict = {}  # (group, shape) -> [(video, first frame index, array)]
        self.count: dict = {}  # (group, video) -> frames fed
        self.rows: dict = {}  # (group, video) -> [(first frame index, rows)]
        self.errors: dict = {}  # (group, video) -> message

    def feed(self, i: int, groups: list[str], batch: np.ndarray) -> None:
        for g in groups:
            key = (g, batch.shape[1:])
            self.pending.setdefault(key, []).append((i, self.count.get((g, i), 0), batch))
            self.count[g, i] = self.count.get((g, i), 0) + len(batch)
            while sum(len(b) for *_, b in self.pending[key]) >= self.size[g]:
                self._forward(key, self.size[g])

    def take(self, kind: str, i: int, group: str | None, frames: np.ndarray, frame_groups: list[str]) -> None:
        """What the decode sends: 1 fps frames for every frame group, or one clip group's dense frames."""
        if kind == FRAMES:
            self.feed(i, frame_groups, frames)
        else:
            self.clips(i, group, frames)

    def clips(self, i: int, group: str, frames: np.ndarray) -> None:
        """Dense frames -> non-overlapping windows of frames_per_clip (a shorter tail is dropped)."""
        t = self.exts[group].frames_per_clip
        n = len(frames) // t
        if n:
            self.feed(i, [group], frames[:n * t].reshape(n, t, *frames.shape[1:]))

    def _forward(self, key, limit: int) -> None:
        """One forward of up to ``limit`` pending frames of this (group, size), oldest first."""
        g, take, pieces, n = key[0], [], self.pending[key], 0
        while pieces and n < limit:
            i, first, b = pieces.pop(0)
            if len(b) > limit - n:  # split: the rest waits for the next forward
                pieces.insert(0, (i, first + limit - n, b[limit - n:]))
                b = b[:limit - n]
            take.append((i, first, b))
            n += len(b)
        try:
            out = np.asarray(self.exts[g](np.concatenate([b for *_, b in take])), dtype=self.exts[g].dtype)
        except Exception as e:  # an extractor bug or OOM: this group fails for these videos, the rest go on
            for i, *_ in take:
                self.errors.setdefault((g, i), f"{type(e).__name__}: {e}")
            return
        a = 0
        for i, first, b in take:
            self.rows.setdefault((g, i), []).append((first, out[a:a + len(b)]))
            a += len(b)

    def flush(self) -> None:
        for key in list(self.pending):
            while self.pending[key]:
                self._forward(key, self.size[key[0]])

    def result(self, group: str, i: int) -> np.ndarray:
        if (group, i) in self.errors:
            raise RuntimeError(self.errors[group, i])
        rows = [r for _, r in sorted(self.rows.pop((group, i), []), key=lambda x: x[0])]
        return np.concatenate(rows) if rows else np.zeros((0, self.exts[group].dim), self.exts[group].dtype)


@dataclass(frozen=True)
class DecodePlan:
    """What one video's single decode must give (picklable: decode workers get it, never the models)."""
    frames: bool  # 1 fps frames for the frame groups
    clips: tuple[tuple[str, float, int, int], ...]  # (group, fps, short side, frames per clip) per clip group
    audio: bool
    mel: bool  # compute the log-mel beside the decode (the logmel group, or DAVEnet with no stored log-mel)
    raw_audio: bool  # a group takes the waveform itself (kept after the log-mel is made)
    opts: Options
    threads: int = 1  # the decoder's threads (PyAV; the ffmpeg CLI picks its own)
    at_once: int = 1  # videos decoded at once in each decoding process, a thread each (NVDEC: one session each)


@dataclass
class DecodeResult:
    """One video's decode, without its frames (they went to the batcher): the log-mel if asked for."""
    dec: object = None  # pipeline.decode.Decoded, frames and audio dropped once used
    failure: DecodeFailure | None = None
    mel: np.ndarray | None = None
    mel_error: str | None = None


def decode_video(plan: DecodePlan, path: str, sink, ahead: Ahead | None = None) -> DecodeResult:
    """Decode one video once: frames to ``sink(kind, group, array)`` as they come, the log-mel computed here
    (``ahead``: NVDEC's CPU share of it and its log-mel, made in a CPU process)."""
    if ahead is not None and ahead.whole is not None:  # NVDEC cannot take it: a CPU process decoded it whole
        sent, out = ahead.whole
        for kind, group, arr in sent:
            sink(kind, group, arr)
        return out
    opts = plan.opts
    prepared = ahead.prepared if ahead is not None else None
    read = {"pyav": partial(decode, threads=plan.threads), "ffmpeg": partial(decode_ffmpeg, hwaccel=opts.hwaccel),
            "nvdec": partial(decode_nvdec, gpu=int(opts.device.partition(":")[2] or 0), prepared=prepared)
            }[opts.decoder]
    streams = [FrameStream(fps, side, lambda b, g=g: sink(CLIP_FRAMES, g, np.stack(b)), t * CLIPS_PER_FORWARD)
               for g, fps, side, t in plan.clips]
    out = DecodeResult()
    if not (plan.frames or streams or plan.audio):
        return out
    try:
        out.dec = read(path or None, frames=plan.frames, audio=plan.audio, short_side=opts.short_side,
                       on_frames=lambda b: sink(FRAMES, None, np.stack(b)), batch=opts.batch_size,
                       **({"streams": streams} if streams else {}))
    except DecodeFailure as f:
        out.failure = f
        if f.status == "no_video" and plan.audio:  # audio-only file: the audio groups still work
            try:
                out.dec = read(path, frames=False, audio=True)
            except DecodeFailure as f2:
                out.failure = f2
    if ahead is not None and prepared is not None and out.dec is prepared.decoded:  # NVDEC used what came ahead
        out.mel, out.mel_error = ahead.mel, ahead.mel_error
    elif plan.mel and out.dec is not None and out.dec.audio is not None:
        out.mel, out.mel_error = _logmel(out.dec.audio, opts)
    return out


def _logmel(audio: np.ndarray, opts: Options) -> tuple[np.ndarray | None, str | None]:
    """(log-mel, None) or (None, the error). Rounded as stored, so DAVEnet sees the same input whether the log-mel
    was just computed or read."""
    try:
        return extractor(LOGMEL, opts)(audio).astype(np.float16).astype(np.float32), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


WHOLE_BYTES = 256 << 20  # a video NVDEC cannot take is decoded whole in a CPU process when its frames fit in this


@dataclass
class Ahead:
    """One video's share of an NVDEC decode made in a CPU process: which frames and the audio (``prepared``),
    and the log-mel of that audio (the audio itself travels back only when a group takes the waveform). For a
    video NVDEC cannot take, the whole CPU decode instead (``whole``: the frames sent, in order, and the result)."""
    prepared: Prepared
    mel: np.ndarray | None = None
    mel_error: str | None = None
    whole: tuple[list, DecodeResult] | None = None


class _TooLarge(Exception):
    """A whole decode in a CPU process would hold more than WHOLE_BYTES of frames: the session decodes it."""


def _decode_whole(path: str, plan: DecodePlan, why: str) -> tuple[list, DecodeResult] | None:
    """The CPU decode of a video NVDEC cannot take, in this CPU process (so it holds no session's GIL): the frames
    it sends, and its result; None where its frames would pass WHOLE_BYTES."""
    from dataclasses import replace

    sent, held = [], [0]

    def keep(kind, group, arr):
        held[0] += arr.nbytes
        if held[0] > WHOLE_BYTES:
            raise _TooLarge
        sent.append((kind, group, arr))

    try:
        out = decode_video(replace(plan, threads=1, opts=replace(plan.opts, decoder="pyav")), path, keep)
    except _TooLarge:
        return None
    if out.dec is not None:
        out.dec.cpu_fallback = why
        if not plan.raw_audio:  # only the log-mel travels back
            out.dec.audio = None
    return sent, out


def _prepare(path: str, rates: list[float], plan: DecodePlan) -> Ahead:
    """In a CPU process: ``decode_nvdec.prepare``, and the log-mel when the plan asks for one; a video NVDEC cannot
    take is decoded here whole."""
    out = Ahead(prepare(path, rates, plan.audio))
    if out.prepared.cpu_only:
        out.whole = _decode_whole(path, plan, out.prepared.cpu_only)
        return out
    decoded = out.prepared.decoded
    if plan.mel and decoded is not None and decoded.audio is not None:
        out.mel, out.mel_error = _logmel(decoded.audio, plan.opts)
        if not plan.raw_audio:
            decoded.audio = None
    return out


def _fed(messages, batcher: Batcher, of: dict):
    """Frames from the decodes to the models as they come; yields (video, DecodeResult) as each video ends."""
    for kind, i, group, item in messages:
        if kind == "done":
            yield i, item
        else:
            batcher.take(kind, i, group, item, of[FRAMES])


class _Decodes(IterableDataset):
    """The part's videos decoded in DataLoader worker processes (an IterableDataset; iterated in this process,
    all of them): each video in a thread, sending messages (kind, video, group, array) as frames decode, then
    ("done", video, None, DecodeResult). Every thread of every process takes the next video as it finishes one
    (``order``: longest first where several share the part, so no decoder is left with a long video at the
    end while the others wait), and ("end", ...) when none is left."""

    def __init__(self, job: PartJob, plan: DecodePlan, shared: bool = False):
        self.videos, self.plan, self.ahead = [p for _, p in job.videos], plan, None  # ahead: _Ahead, NVDEC's
        self.order = _longest_first(self.videos) if shared else list(range(len(self.videos)))
        self.next = forkserver().Value("q", 0)  # the next position in ``order``: shared by the processes

    def take(self) -> int | None:
        """The position in ``order`` of the next video to decode (None: every video is taken)."""
        with self.next.get_lock():
            k = self.next.value
            self.next.value = k + 1
        return k if k < len(self.order) else None

    def __iter__(self):
        import queue

        q: queue.Queue = queue.Queue(maxsize=2 * self.plan.at_once)  # decode threads wait while it is full
        stop = threading.Event()

        def put(msg) -> None:
            while not stop.is_set():
                try:
                    return q.put(msg, timeout=0.5)
                except queue.Full:
                    pass
            raise _Stopped

        def work():
            try:
                while (k := self.take()) is not None:
                    i = self.order[k]
                    try:
                        res = decode_video(self.plan, self.videos[i], lambda kind, g, arr, i=i: put((kind, i, g, arr)),
                                           self.ahead.get(k) if self.ahead else None)
                    except Exception as e:  # never lose the part: this video fails, the rest go on
                        res = DecodeResult(failure=DecodeFailure("extract_error", f"{type(e).__name__}: {e}"))
                    if res.dec is not None and not self.plan.raw_audio:  # only the log-mel travels back
                        res.dec.audio = None
                    put(("done", i, None, res))
                put(("end", None, None, None))
            except _Stopped:  # the reader went away (its task failed): end, holding no file open
                return

        for _ in range(self.plan.at_once):
            threading.Thread(target=work, daemon=True).start()
        try:
            ended = 0
            while ended < self.plan.at_once:
                msg = q.get()
                if msg[0] == "end":
                    ended += 1
                else:
                    yield msg
        finally:
            stop.set()


def _longest_first(paths: list[str]) -> list[int]:
    """The videos' indices, largest file first (a file's size stands for its decode's length; a missing file
    fails at once, last)."""
    import os

    return sorted(range(len(paths)), key=lambda i: -os.path.getsize(paths[i]) if os.path.isfile(paths[i]) else 1)


_POOLS: dict = {}  # processes -> the ProcessPoolExecutor that prepares NVDEC's videos, kept for the next parts
_POOLS_LOCK = threading.Lock()


def _prepare_pool(processes: int):
    """This process's pool of ``processes`` CPU processes, started once (forked from a clean server, never from
    this CUDA process) and reused by every part it runs after."""
    from concurrent.futures import ProcessPoolExecutor

    with _POOLS_LOCK:  # a worker's parts at once share it
        pool = _POOLS.get(processes)
        if pool is None or getattr(pool, "_broken", False):
            pool = _POOLS[processes] = ProcessPoolExecutor(processes, mp_context=forkserver())
        return pool


class _Ahead:
    """NVDEC's CPU share of the part's videos (``_prepare``: which frames, the audio, its log-mel; Python-bound,
    so threads would queue on the GIL) made in ``processes`` CPU processes, at most ``ahead`` videos before the
    NVDEC sessions take them (``paths`` in the order they take them). Where processes cannot start, each session
    prepares its own videos."""

    def __init__(self, plan: DecodePlan, paths: list[str], processes: int, ahead: int):
        self.paths, self.ahead, self.processes = paths, ahead, processes
        self.args = (picked_rates(plan.frames, [fps for _, fps, _, _ in plan.clips]), plan)  # decode_video's rates
        self.futures, self.submitted, self.lock = {}, 0, threading.Lock()

    def get(self, i: int) -> Ahead | None:
        """The share of the ``i``-th video the sessions take, made ahead (None: the session prepares it itself)."""
        with self.lock:
            try:
                while self.processes and self.submitted < min(len(self.paths), i + 1 + self.ahead):
                    self.futures[self.submitted] = _prepare_pool(self.processes).submit(
                        _prepare, self.paths[self.submitted], *self.args)
                    self.submitted += 1
            except Exception:  # e.g. a daemonic Dask worker may not start processes: prepare in the sessions
                self.processes = 0
            future = self.futures.pop(i, None)
        try:
            return future.result() if future is not None else None
        except Exception:  # the pool broke (a process killed): the session prepares it
            return None

    def close(self) -> None:
        """Drop what this part will not take (the pool stays for the next part)."""
        with self.lock:
            for future in self.futures.values():
                future.cancel()
            self.futures.clear()


class _Stopped(BaseException):
    """The decode thread's reader is gone: not an Exception, so no video's error handling catches it."""


def _as_is(message):
    return message


def _pooled(decodes: _Decodes, batcher: Batcher, of: dict, workers: int):
    """Videos decoded in ``workers`` processes while this one runs the models on frames from all of them."""
    from torch.utils.data import DataLoader

    # in_order=False: each process's messages as they come (in order, a process waits for the slowest one's)
    loader = DataLoader(decodes, batch_size=None, num_workers=workers, collate_fn=_as_is,
                        multiprocessing_context=forkserver(), in_order=False)
    try:
        yield from _fed(loader, batcher, of)
    except AssertionError as e:
        if "daemonic" in str(e):
            raise RuntimeError("--decode-workers needs Dask workers that may start processes: start them with "
                               "DASK_DISTRIBUTED__WORKER__DAEMON=False (or use --decode-workers 0)") from e
        raise


def _stored_logmel(job: PartJob):
    path = Path(job.store, "parts", f"p{job.part:06d}", LOGMEL)
    return read_unit(path)[0] if path.is_dir() else None


def _this_gpu(device: str) -> str:
    """``cuda`` on a local cluster of several GPU workers: worker k takes GPU k mod count."""
    import torch

    if device != "cuda" or torch.cuda.device_count() < 2:
        return device
    try:
        from distributed import get_worker

        return f"cuda:{int(get_worker().name) % torch.cuda.device_count()}"
    except (ImportError, ValueError, TypeError):  # not in a Dask worker, or a worker named by the user
        return device


def _worker_options(opts: Options) -> Options:
    """The options this worker builds its extractors with: its own GPU on a local cluster of several."""
    from dataclasses import replace

    return replace(opts, device=_this_gpu(opts.device)) if opts.device.startswith("cuda") else opts


def provenances(groups: list[str], opts: Options) -> dict[str, dict]:
    """A Dask task: each group's provenance (what the store records), from the extractors this worker builds for
    its parts and keeps (its first part finds them built; the driver builds no model, nor holds a GPU)."""
    opts = _worker_options(opts)
    return {g: extractor(g, opts).provenance() for g in groups}


def run_part(job: PartJob) -> dict:
    import os

    import torch

    t0 = time.time()
    if not Path(job.store, "zarr.json").is_file():  # a worker on another machine, or without the driver's mount
        import socket

        raise FileNotFoundError(f"this worker ({socket.gethostname()}, working folder {os.getcwd()}) cannot see the "
                                f"store {job.store}: run every Dask worker where that path is the driver's store "
                                "(a shared filesystem, the same mount point)")
    if job.opts.decoder == "nvdec" and (why := unavailable()):  # a --scheduler worker without NVDEC
        raise RuntimeError(f"--decoder nvdec: {why} on this worker")
    if job.threads:
        torch.set_num_threads(job.threads)
    cuda = job.opts.device.startswith("cuda")
    opts = _worker_options(job.opts)
    exts = {g: extractor(g, opts) for g in job.groups}
    of = {kind: [g for g, e in exts.items() if e.consumes == kind] for kind in (FRAMES, CLIP_FRAMES, AUDIO, LOGMEL)}
    n = len(job.videos)
    # log-mel consumers (DAVEnet) read the log-mel this run computes, or the stored one, or compute it unstored
    stored_mel = _stored_logmel(job) if of[LOGMEL] and LOGMEL not in exts else None
    want_mel = LOGMEL in exts or (bool(of[LOGMEL]) and stored_mel is None)
    raw = [g for g in of[AUDIO] if g != LOGMEL]
    workers, at_once = job.decode_workers, 1
    if opts.decoder == "nvdec":  # threads of this process, a session each (processes would each hold a CUDA context)
        workers, at_once = 0, min(n, job.decode_workers or NVDEC_SESSIONS)
    elif workers is None:
        workers = max(1, (os.cpu_count() or 1) // max(1, torch.cuda.device_count())) if cuda else 0
    pooled = workers and n > 1
    plan = DecodePlan(frames=bool(of[FRAMES]), audio=bool(raw) or want_mel, mel=want_mel, raw_audio=bool(raw), opts=opts,
                      clips=tuple((g, exts[g].fps, exts[g].side, exts[g].frames_per_clip) for g in of[CLIP_FRAMES]),
                      threads=1 if pooled else job.threads or 1, at_once=at_once)
    results = {g: Column(n) for g in job.groups}
    batcher = Batcher({g: exts[g] for g in of[FRAMES] + of[CLIP_FRAMES]}, opts.batch_size)
    # NVDEC: CPU processes prepare the videos, two each ahead: one per session, leaving this process a core of
    # its GPU's share (none for a single video)
    cores = (os.cpu_count() or 1) // max(1, torch.cuda.device_count() if cuda else 1)
    decodes = _Decodes(job, plan, shared=bool(pooled) or at_once > 1)
    ahead = decodes.ahead = (_Ahead(plan, [decodes.videos[i] for i in decodes.order], min(at_once, max(1, cores - 1)),
                                    2 * at_once)
                             if opts.decoder == "nvdec" and n > 1 and (plan.frames or plan.clips) else None)
    decoded = _pooled(decodes, batcher, of, min(workers, n)) if pooled else _fed(decodes, batcher, of)
    kept = {}  # the decode of each video, its audio dropped: the frame groups finish once every forward is done
    try:
        for i, d in decoded:
            _finish_audio(i, d, exts, of, stored_mel, results)
            if d.dec is not None:
                d.dec.audio = None
            kept[i] = d
    finally:
        if ahead is not None:
            ahead.close()
    batcher.flush()
    for i in range(n):
        _finish_frames(i, kept[i], of, batcher, results)
    for group, r in results.items():
        write_part(job.store, job.part, group, r.ordered(r.rows), r.ordered(r.status), r.ordered(r.error),
                   r.ordered(r.duration), exts[group].dim, {"videos": [v for v, _ in job.videos]}, replace=job.replace)
    seconds = sum(d.dec.duration for d in kept.values() if d.dec is not None)
    fallback = sum(1 for d in kept.values() if d.dec is not None and d.dec.cpu_fallback)
    return {"part": job.part, "groups": job.groups, "videos": n, "seconds": seconds, "decode_workers": workers,
            "prepare_processes": ahead.processes if ahead else 0,
            "cpu_fallback": fallback,
            "status": {g: dict(Counter(r.ordered(r.status))) for g, r in results.items()}, "started": t0,
            "wall": time.time() - t0}


def _outcome(d: DecodeResult) -> tuple[str, str, float]:
    """A truncated file keeps its decodable part: status 'truncated', the reason, the decoded duration."""
    if d.dec is not None and d.dec.truncated:
        return "truncated", d.dec.truncated, d.dec.duration
    return "ok", "", d.dec.duration if d.dec is not None else 0.0


def _need(d: DecodeResult, what_ok: bool, status: str, message: str) -> None:
    if not what_ok:
        raise DecodeFailure(d.failure.status, d.failure.message) if d.failure else DecodeFailure(status, message)


def _finish_frames(i: int, d: DecodeResult, of: dict, batcher: Batcher, results: dict) -> None:
    ok, note, duration = _outcome(d)
    for group in of[FRAMES] + of[CLIP_FRAMES]:
        try:
            _need(d, d.dec is not None and d.dec.n_frames > 0, "no_video", "no frames")
            results[group].put(i, batcher.result(group, i), ok, note, duration)
        except DecodeFailure as f:
            results[group].put(i, None, f.status, f.message, duration)
        except Exception as e:  # the group's forward failed on this video's frames
            results[group].put(i, None, "extract_error", f"{type(e).__name__}: {e}", duration)


def _finish_audio(i: int, d: DecodeResult, exts: dict, of: dict, stored_mel, results: dict) -> None:
    ok, note, duration = _outcome(d)
    for group in sorted(of[AUDIO] + of[LOGMEL], key=lambda g: exts[g].consumes == LOGMEL):
        try:
            if exts[group].consumes == AUDIO and group != LOGMEL:
                _need(d, d.dec is not None and d.dec.audio is not None, "no_audio", d.dec.audio_error if d.dec else "")
                results[group].put(i, exts[group](d.dec.audio), ok, note, duration)
                continue
            mel = d.mel
            if group != LOGMEL and stored_mel is not None:  # the log-mel's users, from the stored log-mel
                off, duration = stored_mel["offsets"], float(stored_mel["duration"][i])
                if stored_mel["status"][i] not in USABLE:
                    raise DecodeFailure(stored_mel["status"][i], stored_mel["error"][i])
                ok, note = stored_mel["status"][i], stored_mel["error"][i]
                mel = stored_mel["data"][off[i]:off[i + 1]].astype(np.float32)
            elif mel is None:
                _need(d, d.dec is not None, "missing", "not decoded")
                if d.mel_error:
                    raise DecodeFailure("extract_error", d.mel_error)
                _need(d, False, "no_audio", d.dec.audio_error or "no audio")
            results[group].put(i, mel if group == LOGMEL else exts[group](mel), ok, note, duration)
        except DecodeFailure as f:
            results[group].put(i, None, f.status, f.message, duration)
        except Exception as e:  # an extractor bug or OOM on one video must not lose the part
            results[group].put(i, None, "extract_error", f"{type(e).__name__}: {e}", duration)
