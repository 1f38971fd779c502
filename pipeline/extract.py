"""`pipeline extract`: plan the store once, then run one task per (part, missing groups) on Dask.

manifest -> plan (plan.py) -> per part: decode each video once -> extractors -> commit (part.py).
This file is the driver: which groups, their provenance, which parts are missing, and the Dask loop.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from features.base import CLIP_FRAMES, FRAMES, TEXT, Options
from features.registry import EXTRACTORS, extractor, extractor_class
from manifests.read import index_video_root

from .decode_nvdec import unavailable as nvdec_unavailable
from .plan import plan_checksum, plan_store, video_paths
from .store import (CLIP_CHUNK, DiskFull, FeatureStore, StoreLock, add_groups, clean_temporaries,
                    provenance_differences, record_failed_parts, write_clip_text, write_status_index, write_text)

ALL_GROUPS = tuple(EXTRACTORS)
PARTS_AT_ONCE = 2  # parts a worker runs at a time where its parts decode in processes (--decode-workers, NVDEC)
log = logging.getLogger("mmcache")

if TYPE_CHECKING:  # torch and the extractors are imported where a run needs them: `pipeline status` and
    from .part import PartJob  # `--help` start in 0.6 s instead of 1.8


class ExtractError(RuntimeError):
    pass


@dataclass
class ExtractConfig:
    """Every flag of `pipeline extract` (pipeline/config.py makes the command line from these comments)."""
    # a CSV: HowTo100M-style (video_id, ...; clips from --captions) or one clip per row (video_id or path, start,
    # end, text, extra columns kept as labels)
    manifest: str
    store: str  # the Zarr feature store to write (a directory)
    # captions JSON {video_id: {start, end, text}}, or a caption table (.jsonl, .csv, .parquet: video_id, start,
    # end, text) for a HowTo100M-style manifest
    captions: str | None = None
    video_root: str | None = None  # folder searched for <video_id>.<ext> (default: the manifest's folder)
    strict: bool = False  # abort on any bad manifest row (off: report it, keep it in the store, go on)
    allow_outside_root: bool = False  # let the manifest's path column name files outside --video-root
    # feature groups to extract, comma-separated (default: resnet152,logmel, plus every group given weights or
    # --random-init)
    groups: list[str] | None = None
    resnet152_weights: str | None = None  # torchvision ResNet-152 state_dict (.pth; HowTo100M: the ImageNet weights)
    davenet: str | None = None  # DAVEnet checkpoint (state_dict .pth) for frozen audio features
    word2vec: str | None = None  # GoogleNews-style word2vec .bin (gensim binary format)
    # weights of any group, repeated per group: a torchvision state_dict .pth (r2plus1d_18, r3d_18, ...), a local
    # Hugging Face folder (hf_vision, hf_text)
    weights: dict[str, str] = field(default_factory=dict)
    random_init: list[str] = field(default_factory=list)  # run these extractors untrained (recorded in the store)
    # local Dask worker processes (0: no Dask, run in this process; default: one per core, with --device cuda
    # one per GPU)
    workers: int | None = None
    threads_per_worker: int | None = None  # torch threads per worker (default: cores // workers)
    # decoding processes per part feeding its models frames from several videos at once (default: 0 on CPU,
    # where each worker decodes for itself; with --device cuda the host's cores // its GPUs); a worker then runs
    # two parts at a time, and Dask workers of --scheduler need DASK_DISTRIBUTED__WORKER__DAEMON=False; with
    # --decoder nvdec: videos NVDEC decodes at once per part, a thread and a decoder session each (default 4),
    # each video's picks, audio and log-mel made ahead in as many CPU processes (at most the worker's cores - 1)
    decode_workers: int | None = None
    scheduler: str | None = None  # address of an existing Dask scheduler (tcp://host:8786)
    # videos per part = one task, one commit (default: at least 4 parts per worker, at most 64 videos; fixed when
    # the store is planned)
    part_size: int | None = None
    # torch device for the extractors (cpu, cuda); cuda: one local worker per GPU running two parts at a time,
    # each part holding a Dask resource GPU=1 (start --scheduler workers with --nthreads 2 --resources GPU=2; GPU=1:
    # a part at a time), decoding in --decode-workers processes
    device: str = "cpu"
    # frames per CNN forward (default: 32 on a GPU, 32 for fp32 on a CPU, 8 for bf16 on a CPU, where it runs
    # 1.3x faster than 32: features/precision.py); 3D groups take 4 clips (a GPU wants e.g. 128)
    batch_size: int | None = None
    short_side: int = 224  # decoded frame short side in pixels, long side truncated (the HowTo100M recipe: 224)
    jpeg_quality: int = 90  # frames group: JPEG quality of the stored frames, 1-100
    jpeg_short_side: int = 0  # frames group: short side of the stored frames in pixels (0: as decoded, --short-side)
    # frozen extractors' precision; auto: the store's if it has one, else bf16/fp16 on CUDA, and on a CPU bf16
    # where it is native and a probe of the run's frame model (at each worker's threads and batch) finds it
    # faster, else fp32 (recorded per group with the probe's figures; a store never mixes; HowTo100M: fp32)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # pyav: in-process; ffmpeg: the HowTo100M extractor's ffmpeg CLI recipe through ffmpeg-python (imageio-ffmpeg's
    # binary or ffmpeg on PATH): the same frames, bit for bit; nvdec: the GPU's video decoder (PyNvVideoCodec,
    # `pip install 'mmcache[nvdec]'`), the same frames picked, scaled on the GPU (not bit-identical: recorded); where
    # there is none, one line says so and the CPU decodes (pyav)
    decoder: Literal["pyav", "ffmpeg", "nvdec"] = "pyav"
    hwaccel: str | None = None  # ffmpeg -hwaccel method for --decoder ffmpeg (cuda, vaapi, ...)
    retry_failed: bool = False  # recompute parts holding failed or truncated videos (off: committed parts are kept)
    # Dask's diagnostic dashboard (bokeh) on the local cluster (or the scheduler's); its address is printed
    dashboard: bool = False
    progress: bool = True  # a progress bar

    def options(self) -> Options:
        """The extractors' options; ``precision`` and ``batch_size`` as settled by ``settle``."""
        if self.precision == "auto" or self.batch_size is None:
            raise ValueError("settle() the precision and batch size before building extractors")
        return Options(weights=self.weight_paths(), random_init=tuple(sorted(self.random_init)),
                       device=self.device, batch_size=self.batch_size, short_side=self.short_side,
                       precision=self.precision, decoder=self.decoder, hwaccel=self.hwaccel,
                       jpeg_quality=self.jpeg_quality, jpeg_short_side=self.jpeg_short_side)

    def weight_paths(self) -> tuple[tuple[str, str], ...]:
        named = {"resnet152": self.resnet152_weights, "davenet": self.davenet, "word2vec": self.word2vec}
        weights = {**{g: w for g, w in named.items() if w}, **self.weights}
        # absolute before they leave the driver: a --scheduler worker resolves paths in its own folder
        return tuple(sorted((g, os.path.abspath(w) if os.path.exists(w) else w) for g, w in weights.items()))

    def wanted_groups(self) -> list[str]:
        groups = list(self.groups) if self.groups else list(dict.fromkeys(
            ["resnet152", "logmel", *(g for g, _ in self.weight_paths()), *self.random_init]))
        bad = [g for g in groups + list(self.weights) + list(self.random_init) if g not in EXTRACTORS]
        if bad:
            raise ExtractError(f"unknown group(s) {bad}; choose from {list(ALL_GROUPS)}")
        return groups


# ---------------------------------------------------------------------------------------------
# text: tokenised in the driver, streamed over the clip table a chunk at a time, committed as one unit

def extract_text(cfg: ExtractConfig, store: FeatureStore) -> dict:
    from tqdm import tqdm

    w2v = extractor("word2vec", cfg.options())

    def chunks():
        for a in tqdm(range(0, store.n_clips, CLIP_CHUNK), disable=not cfg.progress, desc="word2vec", unit="chunk"):
            texts = store.clip_values("text", np.arange(a, min(store.n_clips, a + CLIP_CHUNK)))
            ids = [np.asarray(i, np.int32) for i in w2v(texts)]
            yield np.array(["empty_caption" if not str(t).strip() else ("ok" if len(i) else "no_known_words")
                            for t, i in zip(texts, ids)], dtype=object), ids

    return write_text(store, chunks(), len(w2v.kv.key_to_index), lambda rows: w2v.kv.vectors[rows])


def extract_clip_text(cfg: ExtractConfig, store: FeatureStore, group: str) -> dict:
    """A per-clip text group other than word2vec (hf_text): embeddings and token ids, a chunk at a time."""
    from tqdm import tqdm

    ext = extractor(group, cfg.options())

    def chunks():
        for a in tqdm(range(0, store.n_clips, CLIP_CHUNK), disable=not cfg.progress, desc=group, unit="chunk"):
            texts = store.clip_values("text", np.arange(a, min(store.n_clips, a + CLIP_CHUNK)))
            emb, ids = ext(texts)
            yield np.array(["empty_caption" if not str(t).strip() else "ok" for t in texts], dtype=object), emb, ids

    return write_clip_text(store, group, chunks(), ext.dim)


# ---------------------------------------------------------------------------------------------
# driver

def _open_or_plan(cfg: ExtractConfig) -> FeatureStore:
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
    plan = plan_store(path, cfg.manifest, cfg.captions, cfg.video_root, cfg.strict, cfg.part_size, cfg.workers,
                      cfg.allow_outside_root)
    log.info("planned %s: %d videos, %d clips, %d problems (%s)", path, plan["videos"], plan["clips"],
             plan["problems"], plan["problems_at"])
    store = FeatureStore(path)
    if store.meta["plan_sha256"] != plan["plan_sha256"]:  # another run's plan won the race
        raise ExtractError(f"{path} was just planned by another run from a different manifest/captions")
    return store


def _record_groups(cfg: ExtractConfig, store: FeatureStore, groups: list[str], lock: StoreLock, why: dict,
                   cluster: Cluster | None = None) -> dict[str, dict]:
    metas = _provenances(cfg, groups, cluster)
    with lock.attrs():  # read, compare and add under one lock: concurrent runs never lose a group record
        store.attrs = FeatureStore(store.path).attrs
        _check_groups(store, metas)
        new = [g for g in metas if g not in store.groups]
        store.attrs = add_groups(store.path, metas, {"precision": cfg.precision, "why": why} if new else None)
    return metas


def _provenances(cfg: ExtractConfig, groups: list[str], cluster: Cluster | None) -> dict[str, dict]:
    """Each group's provenance, its extractor built (weights checked): the video groups' by every worker, which
    keeps them for its parts (3.4 s of the driver's start on 2 cores went to a ResNet-152 of its own, and with
    --device cuda a GPU of its own), the text groups' here, where they run."""
    from .part import provenances

    opts = cfg.options()
    remote = [g for g in groups if extractor_class(g).consumes != TEXT] if cluster is not None else []
    built = cluster.on_each_worker(provenances, remote, opts)[0] if remote else {}
    return {g: built[g] if g in built else extractor(g, opts).provenance() for g in groups}


def _check_groups(store: FeatureStore, metas: dict[str, dict]) -> None:
    for g, meta in metas.items():
        if g in store.groups and (diff := provenance_differences(store.groups[g], meta)):
            raise ExtractError(f"group {g!r} in {store.path} was made with different settings (store -> now): "
                               + "; ".join(diff) + ". Use a new --store, or the store's settings")


def _gpu_resources(cfg: ExtractConfig) -> dict:
    """A task's resources: on CUDA, one of its worker's GPU slots (only a worker holding a GPU runs it)."""
    return {"resources": {"GPU": 1}} if cfg.device.startswith("cuda") else {}


def _jobs(cfg: ExtractConfig, store: FeatureStore, groups: list[str], threads: int | None) -> list[PartJob]:
    from .part import PartJob

    done = {g: store.committed(g) for g in groups}
    failed_parts: dict[int, list[str]] = {}
    if cfg.retry_failed:
        for g in groups:
            status, _ = store.video_status(g)
            for p in np.unique(np.flatnonzero((status != "ok") & (status != "pending")) // store.part_size):
                failed_parts.setdefault(int(p), []).append(g)
    paths = video_paths(store, cfg.video_root)
    missing = [i for i, p in enumerate(paths) if not p]
    if cfg.retry_failed and missing and not cfg.video_root:  # files absent at planning time may have arrived
        found = index_video_root(str(Path(cfg.manifest).parent))[0]
        for i in missing:
            paths[i] = found.get(store.videos["video_id"][i], "")
    jobs = []
    where = str(store.path.resolve())  # absolute: a --scheduler worker resolves paths in its own folder
    for p in range(store.n_parts):
        a, b = store.part_range(p)
        vids = [(str(store.videos["video_id"][i]), os.path.abspath(paths[i]) if paths[i] else "")
                for i in range(a, b)]
        todo = [g for g in groups if p not in done[g]]
        if todo:
            jobs.append(PartJob(where, p, vids, todo, cfg.options(), threads, decode_workers=cfg.decode_workers))
        if failed_parts.get(p):
            jobs.append(PartJob(where, p, vids, failed_parts[p], cfg.options(), threads, replace=True,
                                decode_workers=cfg.decode_workers))
    return jobs


def extract(cfg: ExtractConfig) -> dict:
    """Run (or resume) an extraction. Returns a summary dict."""
    if cfg.hwaccel and cfg.decoder != "ffmpeg":
        raise ExtractError(f"--hwaccel {cfg.hwaccel} is an ffmpeg CLI option: pass --decoder ffmpeg with it (the "
                           "default decoder, PyAV in-process, decodes on the CPU)")
    if cfg.decoder == "nvdec" and not cfg.scheduler and (why := nvdec_unavailable()):
        print(f"--decoder nvdec: {why}; decoding on the CPU (pyav) instead, recorded as such", flush=True)
        cfg = replace(cfg, decoder="pyav")
    if cfg.workers is None:  # --scheduler: its workers' own; this count only sizes the parts of a new store
        cuda_here = cfg.device.startswith("cuda") and not cfg.scheduler
        cfg = replace(cfg, workers=_gpus() if cuda_here else os.cpu_count() or 1)
    groups = cfg.wanted_groups()
    lock = StoreLock(cfg.store)
    try:
        return _extract(cfg, groups, lock, alone=lock.run(clean=lambda: clean_temporaries(cfg.store)))
    finally:
        lock.close()


def worker_threads(cfg: ExtractConfig) -> int | None:
    """torch threads in each worker: the flag, else the cores shared out (a --scheduler's workers: their own)."""
    if cfg.threads_per_worker or cfg.scheduler:
        return cfg.threads_per_worker
    return max(1, (os.cpu_count() or 1) // max(1, cfg.workers))


def settle(cfg: ExtractConfig, groups: list[str], store: FeatureStore, cluster: Cluster | None = None
           ) -> tuple[ExtractConfig, dict]:
    """``--precision auto`` and an unset ``--batch-size`` made concrete once, before any model is built: a store
    that holds groups keeps their precision (a store never mixes); otherwise features/precision.py decides
    (``choose_precision``), here, or with --scheduler on one of its workers (the driver may have another CPU, or
    no GPU). Returns the config and why."""
    from features.precision import default_batch

    known = {store.groups[g]["params"]["precision"] for g in groups
             if "precision" in store.groups.get(g, {}).get("params", {})}
    if cfg.precision == "auto" and known:
        if len(known) > 1:
            raise ExtractError(f"{cfg.store} holds groups in several precisions {sorted(known)}: pass --precision")
        precision, why = known.pop(), {"source": f"the precision {cfg.store}'s groups were extracted in"}
    elif cfg.scheduler and cluster is not None:
        precision, why = cluster.on_a_worker(choose_precision, cfg, groups)
    else:  # a probe that measures waits for the local workers' start: it must time an idle machine
        precision, why = choose_precision(cfg, groups, cluster.wait if cluster is not None else None)
    return replace(cfg, precision=precision, batch_size=cfg.batch_size or default_batch(precision, cfg.device)), why


def choose_precision(cfg: ExtractConfig, groups: list[str], quiet=None) -> tuple[str, dict]:
    """features/precision.py's choice where this runs (a Dask task with --scheduler), probing the first frame
    model at the workers' threads and batch (``quiet()`` first, when it measures)."""
    import socket

    import torch

    from features.precision import CPU_BATCH, probe_cpu, resolve
    from features.registry import build

    models = [g for g in groups if extractor_class(g).consumes in (FRAMES, CLIP_FRAMES)
              and extractor_class(g).runs_model]
    threads = worker_threads(cfg) or torch.get_num_threads()
    batch = cfg.batch_size or CPU_BATCH["bf16"]
    opts = Options(weights=cfg.weight_paths(), random_init=tuple(sorted(cfg.random_init)), batch_size=batch,
                   short_side=cfg.short_side)
    probe = (lambda g=models[0]: probe_cpu(g, lambda p: build(g, replace(opts, precision=p)), threads, batch,
                                           before=quiet)) if models else None
    try:
        precision, why = resolve(cfg.precision, cfg.device, probe)
    except ValueError as e:
        raise ExtractError(str(e)) from e
    if cfg.scheduler:
        why = {**why, "source": f"{why['source']}; on a worker of the cluster ({socket.gethostname()})"}
    return precision, why


def _gpus() -> int:
    import torch

    if not torch.cuda.is_available():
        raise ExtractError("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)")
    return torch.cuda.device_count()


def _extract(cfg: ExtractConfig, groups: list[str], lock: StoreLock, alone: bool) -> dict:
    if not alone:
        log.warning("another extraction is running on %s: its temporary files are left alone", cfg.store)
    # --scheduler's is connected to when first needed; a local one starts now, if the store has work left
    cluster = Cluster(cfg) if cfg.scheduler or (cfg.workers != 0 and _work_pending(cfg, groups)) else None
    try:
        return _extract_with(cfg, groups, lock, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _extract_with(cfg: ExtractConfig, groups: list[str], lock: StoreLock, cluster: Cluster | None) -> dict:
    store = _open_or_plan(cfg)
    cfg, why = settle(cfg, groups, store, cluster)
    metas = _record_groups(cfg, store, groups, lock, why, cluster)
    summary: dict = {"store": str(store.path), "videos": store.n_videos, "clips": store.n_clips,
                     "groups": groups, "parts_run": 0, "failed_parts": {},
                     "precision": cfg.precision, "batch_size": cfg.batch_size, "precision_why": why,
                     "decoder": cfg.decoder}
    summary["text"] = {}
    for g in [g for g in groups if metas[g]["rate"] is None]:  # per clip, run here over the clip table
        if g == "word2vec" and not (store.path / "word2vec").is_dir():
            summary["text"][g] = extract_text(cfg, store)
        elif g != "word2vec" and not (store.path / "text" / g).is_dir():
            summary["text"][g] = extract_clip_text(cfg, store, g)
        else:  # made by an earlier run: its counts, so every run's summary lists every group
            summary["text"][g] = store.text_status_counts(g)
    video_groups = [g for g in groups if metas[g]["rate"] is not None]  # per video; text is per clip
    jobs = _jobs(cfg, store, video_groups, worker_threads(cfg))
    summary["parts_run"] = len(jobs)
    if jobs:
        try:
            _run(jobs, cfg, summary, cluster)
        finally:  # `pipeline status` names why a part is still pending
            record_failed_parts(store, {j.part for j in jobs}, summary["failed_parts"])
    with lock.attrs():  # one writer of the status index at a time
        for g in video_groups:
            write_status_index(store, g)
    summary["status"] = {g: dict(Counter(store.video_status(g)[0])) for g in video_groups}
    # clips that start at or after their video's decoded end: nothing to read, every trainer drops them
    summary["clips_past_end"] = {g: int(store.video_clips_beyond(g).sum()) for g in video_groups}
    summary["problems"] = store.meta.get("manifest_problems", 0)
    return summary


def _local_cluster(cfg: ExtractConfig):
    """The local Dask cluster: ``cfg.workers`` processes, each with torch, the decoders and the extractors'
    code imported as it starts (2.1 s a worker on 2 cores, paid by its first task otherwise)."""
    import dask
    from dask.distributed import LocalCluster

    from .worker import GROUPS

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cuda = cfg.device.startswith("cuda")
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers: glibc then hands CNN activation buffers
    # back to the OS and faults them in again on every batch (ResNet-152 forward 8% slower, measured).
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    # decode workers (and NVDEC's CPU processes) are processes started by the task: the worker must not be a
    # daemon, and starts their server as it starts (pipeline/processes.py), not on its first part
    spawns = bool(cfg.decode_workers if cfg.decode_workers is not None else cuda) or cfg.decoder == "nvdec"
    # such a worker runs PARTS_AT_ONCE parts at a time: one part's decoders start on its videos while the other
    # part's last videos decode (its GPU counts as that many GPU resources; each part asks for one)
    at_once = PARTS_AT_ONCE if spawns else 1
    # and imports its extractors and what their builds import late (torchvision: 1.2 s), beside the planning
    environ[GROUPS] = ",".join(cfg.wanted_groups())
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                          "distributed.worker.daemon": not (cuda or cfg.decode_workers or cfg.decoder == "nvdec")}):
        return LocalCluster(n_workers=cfg.workers, threads_per_worker=at_once, processes=True,
                            dashboard_address=":0" if cfg.dashboard else None,
                            resources={"GPU": at_once} if cuda else None,
                            preload=["pipeline.worker"] + (["pipeline.processes"] if spawns else []),
                            silence_logs=logging.CRITICAL)  # failures are reported by the driver, once


class Cluster:
    """The Dask cluster the parts run on, and the driver's one client of it: --scheduler's (connected to when first
    needed), or a local one started in a thread as the run begins, so that its workers spawn and import while the
    driver plans the store, settles the precision and tokenises the captions. Tasks on its workers build the
    extractors before the parts (and with --scheduler choose the precision), so the driver needs no model and no
    GPU of its own. ``close()`` (idempotent) ends it, also when it was never used (a run with nothing to do)."""

    def __init__(self, cfg: ExtractConfig):
        self.scheduler, self.resources = cfg.scheduler, _gpu_resources(cfg)
        self.future, self._client, self.closed = None, None, False
        if not cfg.scheduler:
            from concurrent.futures import ThreadPoolExecutor

            # Dask is imported here, and the thread imports nothing the driver goes on to import (torch, the
            # extractors): two threads importing torch at once can find it half-made ("partially initialized
            # module 'torch.utils'"). The driver's imports then overlap the workers' start.
            from dask.distributed import LocalCluster  # noqa: F401

            pool = ThreadPoolExecutor(1, thread_name_prefix="mmcache-cluster")
            self.future = pool.submit(_local_cluster, cfg)
            pool.shutdown(wait=False)

    def wait(self):
        """The local cluster, started (None with --scheduler)."""
        return self.future.result() if self.future is not None else None

    def client(self):
        if self._client is None:
            from dask.distributed import Client

            self._client = Client(self.scheduler or self.wait())
        return self._client

    def workers(self) -> list[str]:
        """The workers that may run parts: with --device cuda, those offering the resource GPU (a part asking
        for it would wait for ever on a cluster without one)."""
        need, client = self.resources.get("resources", {}), self.client()
        offers = client.run_on_scheduler(_worker_resources)
        if not offers:  # workers that join later (a batch queue): wait, and say so
            print(f"waiting for the first worker to join the Dask scheduler {self.scheduler}", flush=True)
            client.wait_for_workers(1)
            offers = client.run_on_scheduler(_worker_resources)
        found = [w for w, has in offers.items() if all(has.get(k, 0) >= n for k, n in need.items())]
        if not found:
            raise ExtractError(f"no worker of {self.scheduler or 'the local cluster'} offers the Dask resource GPU, "
                               "and --device cuda parts ask for it: start each GPU's worker with `--nthreads 2 "
                               "--resources GPU=2`")
        return found

    def on_each_worker(self, fn, *args) -> list:
        """``fn(*args)`` on every worker that may run parts, at once (a worker gone meanwhile, e.g. restarted by
        its nanny under a new address: its call runs on another, where a strict restriction would wait for ever)."""
        client = self.client()
        return client.gather([client.submit(fn, *args, workers=[w], allow_other_workers=True, pure=False,
                                            **self.resources) for w in self.workers()])

    def on_a_worker(self, fn, *args):
        """``fn(*args)`` on one worker that may run parts (the resources pick it)."""
        self.workers()  # none may: say so now
        return self.client().submit(fn, *args, pure=False, **self.resources).result()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                if self._client is not None:
                    self._client.close()
                if self.future is not None:
                    self.future.result().close()
            except Exception:  # it failed to start: the run has already said so, or did not need it
                pass


def _worker_resources(dask_scheduler) -> dict[str, dict]:
    """On the scheduler: each worker's resources."""
    return {w: dict(ws.resources) for w, ws in dask_scheduler.workers.items()}


def _work_pending(cfg: ExtractConfig, groups: list[str]) -> bool:
    """Whether this run will run part tasks, as far as the store says before planning: a new store, a group it
    lacks, a video group with uncommitted parts, or --retry-failed."""
    path = Path(cfg.store)
    if cfg.retry_failed or not (path / "zarr.json").exists():
        return True
    try:
        store = FeatureStore(path)
    except Exception:  # _open_or_plan says what is wrong with it
        return False
    return any(g not in store.groups or (store.groups[g]["rate"] is not None
                                         and len(store.committed(g)) < store.n_parts) for g in groups)


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the (start, end) spans."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _run(jobs: list[PartJob], cfg: ExtractConfig, summary: dict, cluster: Cluster | None = None) -> None:
    from tqdm import tqdm

    from .part import run_part

    bar = tqdm(total=sum(len(j.videos) for j in jobs), unit="video", disable=not cfg.progress,
               desc="extract", dynamic_ncols=True)
    t0, seconds, failed, spans, workers = time.time(), 0.0, 0, [], cfg.workers  # the cluster's, once known

    def done(job: PartJob, result: dict | None, error: str | None = None) -> None:
        nonlocal seconds, failed
        if result is None:
            summary["failed_parts"][job.part] = error
            log.error("part %d failed as a whole (it will be retried on the next run): %s", job.part, error)
        else:
            seconds += result["seconds"]
            summary["decode_workers"] = max(summary.get("decode_workers", 0), result.get("decode_workers", 0))
            spans.append((result["started"], result["started"] + result["wall"]))
            summary["task_seconds"] = _covered(spans)  # time in which a task ran (several may overlap)
            if result.get("cpu_fallback"):  # --decoder nvdec: videos NVDEC could not take
                summary["nvdec_cpu_fallback"] = summary.get("nvdec_cpu_fallback", 0) + result["cpu_fallback"]
            summary["nvdec_prepare_processes"] = max(summary.get("nvdec_prepare_processes", 0),
                                                     result.get("prepare_processes", 0))
            failed += max((sum(n for k, n in st.items() if k != "ok") for st in result["status"].values()),
                          default=0)
        bar.update(len(job.videos))
        rate = seconds / max(time.time() - t0, 1e-9)  # video-seconds per second (= 1 fps frames per second)
        bar.set_postfix(failed=failed, video_s_per_s=f"{rate:.1f}",
                        frames_per_s_per_worker=f"{rate / max(1, workers or 1):.1f}")

    if not cfg.scheduler and cfg.workers == 0:
        try:
            for job in jobs:
                try:
                    result = run_part(job)
                except (DiskFull, KeyboardInterrupt):  # every later part would fail the same way: stop
                    raise
                except Exception as e:  # as a Dask task's failure: record, keep going (a rerun retries it)
                    done(job, None, f"{type(e).__name__}: {e}")
                else:
                    done(job, result)
        finally:
            bar.close()
        return

    from dask.distributed import as_completed

    cluster = cluster or Cluster(cfg)  # none was started: the store seemed to have no work left
    gpu = cluster.resources
    try:
        client = cluster.client()
        if cfg.dashboard:
            summary["dashboard"] = client.dashboard_link
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        able, nthreads = cluster.workers(), client.nthreads()
        workers, threads = len(able), sum(nthreads.get(w, 1) for w in able)
        in_flight = 2 * max(1, threads)
        pending = list(jobs)
        by_key = {}
        first = [client.submit(run_part, j, pure=False, retries=1, **gpu) for j in pending[:in_flight]]
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
                nf = client.submit(run_part, j, pure=False, retries=1, **gpu)
                by_key[nf.key] = j
                queue.add(nf)
    finally:
        bar.close()
        cluster.close()
