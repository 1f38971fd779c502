"""`pipeline extract`: plan the store once, then run one task per (part, missing groups) on Dask.

manifest -> plan (videos, clips, parts) -> per part: decode each video once -> extractors -> commit.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.audio import PARAMS as LOGMEL_PARAMS
from manifests.read import index_video_root

from .decode import DecodeFailure, decode
from .plan import plan_checksum, plan_store
from .store import CLIP_CHUNK, USABLE, DiskFull, FeatureStore, StoreLock, add_groups, clean_temporaries, write_part, write_text

VIDEO_GROUPS = ("resnet152", "logmel", "davenet")
ALL_GROUPS = VIDEO_GROUPS + ("word2vec",)
log = logging.getLogger("mmcache")


class ExtractError(RuntimeError):
    pass


@dataclass
class ExtractConfig:
    manifest: str
    store: str
    captions: str | None = None
    video_root: str | None = None
    strict: bool = False
    allow_outside_root: bool = False  # manifest paths may point outside --video-root
    groups: list[str] | None = None  # default: resnet152, logmel (+davenet, word2vec when given)
    resnet152_weights: str | None = None
    davenet: str | None = None
    word2vec: str | None = None
    random_init: list[str] = field(default_factory=list)
    workers: int = os.cpu_count() or 1  # 0 = run in this process, no Dask
    threads_per_worker: int | None = None  # torch threads per worker; default: cores // workers
    scheduler: str | None = None
    part_size: int | None = None  # videos per part; default: at least 4 parts per worker, at most 64 videos
    device: str = "cpu"
    batch_size: int = 32
    short_side: int = 224
    retry_failed: bool = False
    progress: bool = True

    def wanted_groups(self) -> list[str]:
        if self.groups:
            bad = [g for g in self.groups if g not in ALL_GROUPS]
            if bad:
                raise ExtractError(f"unknown group(s) {bad}; choose from {list(ALL_GROUPS)}")
            return list(self.groups)
        groups = ["resnet152", "logmel"]
        if self.davenet or "davenet" in self.random_init:
            groups.append("davenet")
        if self.word2vec:
            groups.append("word2vec")
        return groups


# ---------------------------------------------------------------------------------------------
# per-group provenance recorded in the store; a rerun must match it exactly

def group_meta(cfg: ExtractConfig, group: str) -> dict:
    if group == "resnet152":
        from features.frames import FrameEncoder

        enc = FrameEncoder("resnet152", cfg.resnet152_weights, "resnet152" in cfg.random_init)
        return dict(extractor="torchvision.models.resnet152, fc removed (global average pool, 2048-d)",
                    weights=cfg.resnet152_weights, weights_sha256=enc.checksum,
                    random_init="resnet152" in cfg.random_init, dim=2048, rate=1.0,
                    params=dict(fps=1, selection="ffmpeg fps filter", short_side=cfg.short_side, crop=None,
                                interpolation="bilinear", normalise="imagenet mean/std", l2_normalize=True,
                                dtype="float16"))
    if group == "logmel":
        return dict(extractor="torchaudio MelSpectrogram, AVLnet/DAVEnet front end", weights=None,
                    weights_sha256=None, random_init=False, dim=40, rate=100.0,
                    params=dict(LOGMEL_PARAMS, dtype="float16"))
    if group == "davenet":
        from features.davenet import DaveNetEncoder

        enc = DaveNetEncoder(cfg.davenet, "davenet" in cfg.random_init)
        return dict(extractor="ResDAVEnet over the log-mel spectrogram (frozen)", weights=cfg.davenet,
                    weights_sha256=enc.checksum, random_init="davenet" in cfg.random_init, dim=1024,
                    rate=100.0 / 16, params=dict(input="logmel", dtype="float16"))
    if group == "word2vec":
        from features.text import Word2Vec

        w2v = Word2Vec(cfg.word2vec)
        return dict(extractor="gensim KeyedVectors.load_word2vec_format(binary=True)", weights=cfg.word2vec,
                    weights_sha256=w2v.checksum, random_init=False, dim=w2v.dim,
                    params=dict(tokenizer=r"[\w']+", case="kept", oov="dropped"))
    raise ExtractError(f"unknown group {group!r}")


def _same(a: dict, b: dict) -> bool:
    keys = ("extractor", "weights_sha256", "random_init", "params")
    return all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------------------------------------
# one task: a part of the store, the groups it is missing

@dataclass
class PartJob:
    store: str
    part: int
    videos: list[tuple[str, str]]  # (video_id, path)
    groups: list[str]
    settings: dict
    replace: bool = False


_ENCODERS: dict = {}  # per worker process: frozen models are loaded once


def _encoder(kind: str, s: dict):
    key = (kind, s.get(f"{kind}_weights"), kind in s["random_init"], s["device"])
    if key not in _ENCODERS:
        if kind == "resnet152":
            from features.frames import FrameEncoder
            _ENCODERS[key] = FrameEncoder("resnet152", key[1], key[2], s["device"], s["batch_size"])
        else:
            from features.davenet import DaveNetEncoder
            _ENCODERS[key] = DaveNetEncoder(key[1], key[2], s["device"])
    return _ENCODERS[key]


def _stored_logmel(job: PartJob):
    path = Path(job.store, "parts", f"p{job.part:06d}", "logmel")
    if "logmel" in job.groups or not path.is_dir():
        return None
    from .store import read_unit
    arrays, _ = read_unit(path)
    return arrays


def run_part(job: PartJob) -> dict:
    """Decode each video of the part once, run the missing extractors, commit one unit per group."""
    import torch

    from features.audio import logmel

    t0 = time.time()
    if job.settings.get("threads"):
        torch.set_num_threads(job.settings["threads"])
    s = job.settings
    need_frames = "resnet152" in job.groups
    cached_mel = _stored_logmel(job) if "davenet" in job.groups else None
    need_audio = "logmel" in job.groups or ("davenet" in job.groups and cached_mel is None)
    results = {g: {"rows": [], "status": [], "error": [], "duration": []} for g in job.groups}
    seconds = 0.0

    def put(group, rows, status="ok", error="", duration=0.0):
        r = results[group]
        r["rows"].append(rows)
        r["status"].append(status)
        r["error"].append(error)
        r["duration"].append(duration)

    for i, (vid, path) in enumerate(job.videos):
        dec, failure, frame_rows, frame_error = None, None, [], []

        def encode(batch, frame_rows=frame_rows, frame_error=frame_error):  # frames reach the CNN a batch at a time: RAM per video is bounded by the batch
            if not frame_error:
                try:
                    frame_rows.append(_encoder("resnet152", s)(batch).astype(np.float16))
                except Exception as e:  # an extractor bug or OOM: this group fails, the audio groups go on
                    frame_error.append(f"{type(e).__name__}: {e}")

        if need_frames or need_audio:
            try:
                dec = decode(path or None, frames=need_frames, audio=need_audio, short_side=s["short_side"],
                             on_frames=encode if need_frames else None, batch=s["batch_size"])
            except DecodeFailure as f:
                failure = f
                if f.status == "no_video" and need_audio:  # audio-only file: the audio groups still work
                    try:
                        dec = decode(path, frames=False, audio=True)
                    except DecodeFailure as f2:
                        failure = f2
        duration = dec.duration if dec else 0.0
        seconds += duration
        # a truncated file keeps its decodable part: status 'truncated', the reason, the decoded duration
        ok, note = ("truncated", dec.truncated) if dec is not None and dec.truncated else ("ok", "")
        mel = None
        for group in job.groups:
            try:
                if group == "resnet152":
                    if dec is None or not dec.n_frames:
                        raise DecodeFailure(failure.status if failure else "no_video",
                                            failure.message if failure else "no frames")
                    if frame_error:
                        raise RuntimeError(frame_error[0])
                    put(group, np.concatenate(frame_rows), ok, note, duration)
                    continue
                if cached_mel is not None and group == "davenet":
                    off = cached_mel["offsets"]
                    duration = float(cached_mel["duration"][i])
                    if cached_mel["status"][i] not in USABLE:
                        raise DecodeFailure(cached_mel["status"][i], cached_mel["error"][i])
                    ok, note = cached_mel["status"][i], cached_mel["error"][i]
                    mel = cached_mel["data"][off[i]:off[i + 1]].astype(np.float32)
                elif mel is None:
                    if dec is None:
                        raise DecodeFailure(failure.status, failure.message)
                    if dec.audio is None:
                        raise DecodeFailure("no_audio", dec.audio_error or "no audio")
                    # rounded as stored, so DAVEnet sees the same input whether the log-mel was just
                    # computed or read back from the store (a resumed or incremental run)
                    mel = logmel(dec.audio).astype(np.float16).astype(np.float32)
                put(group, mel if group == "logmel" else _encoder("davenet", s)(mel), ok, note, duration)
            except DecodeFailure as f:
                put(group, None, f.status, f.message, duration)
            except Exception as e:  # an extractor bug or OOM on one video must not lose the part
                put(group, None, "extract_error", f"{type(e).__name__}: {e}", duration)

    for group, r in results.items():
        write_part(job.store, job.part, group, r["rows"], r["status"], r["error"], r["duration"],
                   s["dims"][group], {"videos": [v for v, _ in job.videos]}, replace=job.replace)
    return {"part": job.part, "groups": job.groups, "videos": len(job.videos), "seconds": seconds,
            "status": {g: dict(Counter(r["status"])) for g, r in results.items()}, "wall": time.time() - t0}


# ---------------------------------------------------------------------------------------------
# text: tokenised in the driver, streamed over the clip table a chunk at a time, committed as one unit

def extract_text(cfg: ExtractConfig, store: FeatureStore) -> dict:
    from tqdm import tqdm

    from features.text import Word2Vec

    w2v = Word2Vec(cfg.word2vec)

    def chunks():
        for a in tqdm(range(0, store.n_clips, CLIP_CHUNK), disable=not cfg.progress, desc="word2vec", unit="chunk"):
            texts = store.clip_values("text", np.arange(a, min(store.n_clips, a + CLIP_CHUNK)))
            ids = [np.asarray(w2v.ids(t), np.int32) for t in texts]
            yield np.array(["empty_caption" if not str(t).strip() else ("ok" if len(i) else "no_known_words")
                            for t, i in zip(texts, ids)], dtype=object), ids

    return write_text(store, chunks(), len(w2v.kv.key_to_index), lambda rows: w2v.kv.vectors[rows])


# ---------------------------------------------------------------------------------------------
# driver

def _open_or_plan(cfg: ExtractConfig, alone: bool) -> FeatureStore:
    path = Path(cfg.store)
    if path.exists() and not (path / "zarr.json").exists():
        if any(path.iterdir()):
            raise ExtractError(f"{path} exists and is not a feature store; choose a new --store path")
        path.rmdir()
    if (path / "zarr.json").exists():
        store = FeatureStore(path)
        if store.meta["plan_sha256"] != plan_checksum(cfg.manifest, cfg.captions):
            raise ExtractError(f"{path} was planned from a different manifest/captions "
                               f"({store.meta['manifest']}); use a new --store for a new manifest")
        return store
    path.parent.mkdir(parents=True, exist_ok=True)
    if alone:
        clean_temporaries(path)
    plan = plan_store(path, cfg.manifest, cfg.captions, cfg.video_root, cfg.strict, cfg.part_size, cfg.workers,
                      cfg.allow_outside_root)
    log.info("planned %s: %d videos, %d clips, %d problems (%s)", path, plan["videos"], plan["clips"],
             plan["problems"], plan["problems_at"])
    store = FeatureStore(path)
    if store.meta["plan_sha256"] != plan["plan_sha256"]:  # another run's plan won the race
        raise ExtractError(f"{path} was just planned by another run from a different manifest/captions")
    return store


def _record_groups(cfg: ExtractConfig, store: FeatureStore, groups: list[str],
                   lock: StoreLock) -> dict[str, dict]:
    with lock.attrs():  # read, compare and add under one lock: concurrent runs never lose a group record
        store.attrs = FeatureStore(store.path).attrs
        metas = _check_groups(cfg, store, groups)
        store.attrs = add_groups(store.path, metas)
    return metas


def _check_groups(cfg: ExtractConfig, store: FeatureStore, groups: list[str]) -> dict[str, dict]:
    known = store.groups
    metas = {}
    for g in groups:
        meta = group_meta(cfg, g)
        if g in known and not _same(known[g], meta):
            raise ExtractError(
                f"group {g!r} in {store.path} was made with different settings:\n  store: "
                f"{ {k: known[g].get(k) for k in ('weights_sha256', 'random_init', 'params')} }\n  now:   "
                f"{ {k: meta.get(k) for k in ('weights_sha256', 'random_init', 'params')} }\n"
                "Use a new --store, or the same settings.")
        metas[g] = meta
    return metas


def _jobs(cfg: ExtractConfig, store: FeatureStore, groups: list[str], settings: dict) -> list[PartJob]:
    done = {g: store.committed(g) for g in groups}
    failed_parts: dict[int, list[str]] = {}
    if cfg.retry_failed:
        for g in groups:
            status, _ = store.video_status(g)
            for p in np.unique(np.flatnonzero((status != "ok") & (status != "pending")) // store.part_size):
                failed_parts.setdefault(int(p), []).append(g)
    paths = list(store.videos["path"])
    missing = [i for i, p in enumerate(paths) if not p]
    if cfg.retry_failed and missing:  # files that were absent at planning time may have arrived
        root = cfg.video_root or str(Path(cfg.manifest).parent)
        found = index_video_root(root)[0]
        for i in missing:
            paths[i] = found.get(store.videos["video_id"][i], "")
    jobs = []
    for p in range(store.n_parts):
        a, b = store.part_range(p)
        vids = [(str(store.videos["video_id"][i]), str(paths[i])) for i in range(a, b)]
        todo = [g for g in groups if p not in done[g]]
        if todo:
            jobs.append(PartJob(str(store.path), p, vids, todo, settings))
        if failed_parts.get(p):
            jobs.append(PartJob(str(store.path), p, vids, failed_parts[p], settings, replace=True))
    return jobs


def extract(cfg: ExtractConfig) -> dict:
    """Run (or resume) an extraction. Returns a summary dict."""
    groups = cfg.wanted_groups()
    lock = StoreLock(cfg.store)
    try:
        return _extract(cfg, groups, lock, alone=lock.run())
    finally:
        lock.close()


def _extract(cfg: ExtractConfig, groups: list[str], lock: StoreLock, alone: bool) -> dict:
    if not alone:
        log.warning("another extraction is running on %s: its temporary files are left alone", cfg.store)
    store = _open_or_plan(cfg, alone)
    if alone:
        clean_temporaries(store.path)
    metas = _record_groups(cfg, store, groups, lock)
    summary: dict = {"store": str(store.path), "videos": store.n_videos, "clips": store.n_clips,
                     "groups": groups, "parts_run": 0, "failed_parts": {}}
    if "word2vec" in groups and not (store.path / "word2vec").is_dir():
        summary["word2vec"] = extract_text(cfg, store)
    video_groups = [g for g in groups if g in VIDEO_GROUPS]
    workers = cfg.workers if not cfg.scheduler else 0
    settings = dict(resnet152_weights=cfg.resnet152_weights, davenet_weights=cfg.davenet,
                    random_init=list(cfg.random_init), device=cfg.device, batch_size=cfg.batch_size,
                    short_side=cfg.short_side, dims={g: metas[g]["dim"] for g in video_groups},
                    threads=cfg.threads_per_worker or (
                        max(1, (os.cpu_count() or 1) // max(1, workers)) if not cfg.scheduler else None))
    jobs = _jobs(cfg, store, video_groups, settings)
    summary["parts_run"] = len(jobs)
    if jobs:
        _run(jobs, cfg, summary)
    with lock.attrs():  # one writer of the status index at a time
        for g in video_groups:
            store.write_status_index(g)
    summary["status"] = {g: dict(Counter(store.video_status(g)[0])) for g in video_groups}
    summary["problems"] = store.meta.get("manifest_problems", 0)
    return summary


def _run(jobs: list[PartJob], cfg: ExtractConfig, summary: dict) -> None:
    from tqdm import tqdm

    bar = tqdm(total=sum(len(j.videos) for j in jobs), unit="video", disable=not cfg.progress,
               desc="extract", dynamic_ncols=True)
    t0, seconds, failed = time.time(), 0.0, 0

    def done(job: PartJob, result: dict | None, error: str | None = None) -> None:
        nonlocal seconds, failed
        if result is None:
            summary["failed_parts"][job.part] = error
            log.error("part %d failed as a whole (it will be retried on the next run): %s", job.part, error)
        else:
            seconds += result["seconds"]
            summary["task_seconds"] = summary.get("task_seconds", 0.0) + result["wall"]
            failed += max((sum(n for k, n in st.items() if k != "ok") for st in result["status"].values()),
                          default=0)
        bar.update(len(job.videos))
        bar.set_postfix(failed=failed, video_s_per_s=f"{seconds / max(time.time() - t0, 1e-9):.1f}")

    if not cfg.scheduler and cfg.workers == 0:
        for job in jobs:
            done(job, run_part(job))
        bar.close()
        return

    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    logging.getLogger("distributed").setLevel(logging.ERROR)

    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers: glibc then hands CNN activation buffers
        # back to the OS and faults them in again on every batch (ResNet-152 forward 8% slower, measured).
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None,  # failures are reported by the driver, once:
                                   silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        in_flight = 2 * max(1, len(client.scheduler_info()["workers"]) or cfg.workers or 1)
        pending = list(jobs)
        by_key = {}
        first = [client.submit(run_part, j, pure=False, retries=1) for j in pending[:in_flight]]
        for f, j in zip(first, pending[:in_flight]):
            by_key[f.key] = j
        pending = pending[in_flight:]
        queue = as_completed(first)
        for fut in queue:
            job = by_key.pop(fut.key)
            try:
                done(job, fut.result())
            except DiskFull:  # every later part would fail the same way: stop (finished parts are kept)
                raise
            except Exception as e:  # a worker died or the task raised: record, keep going
                done(job, None, f"{type(e).__name__}: {e}")
            if pending:
                j = pending.pop(0)
                nf = client.submit(run_part, j, pure=False, retries=1)
                by_key[nf.key] = j
                queue.add(nf)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
