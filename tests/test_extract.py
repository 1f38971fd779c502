import os
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from features.base import Options
from features.registry import extractor
from pipeline.decode import decode
from pipeline.extract import ExtractConfig, ExtractError, _work_pending, extract
from pipeline.store import FeatureStore, read_unit
from synthetic import tiny_text_model


def config(data, store, paths, **kw):
    base = dict(manifest=data["manifest"], captions=data.get("captions"), video_root=data["video_root"],
                store=str(store), resnet152_weights=paths["resnet152"], word2vec=paths["word2vec"],
                workers=0, part_size=2, short_side=64, precision="fp32", progress=False)
    return ExtractConfig(**{**base, **kw})


def store_arrays(path):
    """Everything in a store, for exact comparison."""
    path = Path(path)
    units = [path / "videos", path / "clips", path / "word2vec", *sorted(path.glob("parts/*/*"))]
    out = {}
    for unit in units:
        if unit.is_dir():
            arrays, _ = read_unit(unit)
            out.update({f"{unit.relative_to(path)}/{k}": v for k, v in arrays.items()})
    return out


@pytest.fixture(scope="module")
def odd_store(odd_dataset, weights, tmp_path_factory):
    store = tmp_path_factory.mktemp("s") / "odd.zarr"
    summary = extract(config(odd_dataset, store, weights))
    return store, summary


def test_statuses_are_recorded_per_video_and_group(odd_store):
    store, summary = odd_store
    s = FeatureStore(store)
    ids = list(s.videos["video_id"])
    frames, _ = s.video_status("resnet152")
    audio, errors = s.video_status("logmel")
    by = dict(zip(ids, zip(frames, audio)))
    assert by["good0"] == ("ok", "ok") and by["good2"] == ("ok", "ok")
    assert by["silent"] == ("ok", "no_audio")
    assert by["truncated"] == ("decode_error", "decode_error")
    assert by["empty"] == ("decode_error", "decode_error")
    assert by["gone"] == ("missing", "missing")
    assert all(e for st, e in zip(audio, errors) if st != "ok")  # every failure has a message
    assert summary["status"]["resnet152"] == {"ok": 4, "decode_error": 2, "missing": 1}


def test_features_equal_direct_extractor_calls(odd_store, odd_dataset, weights):
    store, _ = odd_store
    s = FeatureStore(store)
    g = s.load_group("resnet152")
    i = list(s.videos["video_id"]).index("good1")
    frames = decode(os.path.join(odd_dataset["video_root"], "good1.mp4"), audio=False, short_side=64).frames
    expected = extractor("resnet152", Options(weights=(("resnet152", weights["resnet152"]),)))(frames).astype(np.float16)
    assert g.video(i).shape == (4, 2048)
    np.testing.assert_allclose(g.video(i).astype(np.float32), expected.astype(np.float32), atol=2e-3)
    mel = s.load_group("logmel")
    assert abs(len(mel.video(i)) - 401) <= 8  # 4 s at 100 frames/s, give or take AAC padding


def test_fp32_rows_are_bit_for_bit_those_of_the_sequential_pipeline(real_videos, weights, tmp_path):
    """The decode thread overlapping the forward changes no row at fp32: every stored ResNet-152 row equals, bit
    for bit, the extractor run as the pipeline always ran it (the part's 1 fps frames, in video order, 32 per
    forward across videos), and the log-mel equals the direct call on the decoded audio."""
    from features.audio import logmel

    (tmp_path / "v").mkdir()
    for name, path in real_videos.items():
        (tmp_path / "v" / f"{name}.mp4").symlink_to(path)
    (tmp_path / "v" / "m.csv").write_text("video_id\n" + "".join(f"{n}\n" for n in real_videos))
    cfg = ExtractConfig(manifest=str(tmp_path / "v" / "m.csv"), store=str(tmp_path / "s.zarr"), workers=0,
                        groups=["resnet152", "logmel"], resnet152_weights=weights["resnet152"], part_size=2,
                        short_side=64, precision="fp32", threads_per_worker=2, progress=False)
    summary = extract(cfg)
    assert summary["batch_size"] == 32 and summary["status"]["resnet152"] == {"ok": 2}
    decoded = [decode(str(p), short_side=64) for p in real_videos.values()]
    frames = np.concatenate([d.frames for d in decoded])
    ext = extractor("resnet152", Options(weights=(("resnet152", weights["resnet152"]),), short_side=64))
    want = np.concatenate([ext(frames[a:a + 32]) for a in range(0, len(frames), 32)]).astype(np.float16)
    s = FeatureStore(tmp_path / "s.zarr")
    rows, mel = s.load_group("resnet152"), s.load_group("logmel")
    np.testing.assert_array_equal(np.concatenate([rows.video(i) for i in range(2)]), want)
    for i, d in enumerate(decoded):
        np.testing.assert_array_equal(mel.video(i), logmel(d.audio).astype(np.float16))


def test_frames_group_stores_each_decoded_frame_as_a_jpeg(odd_store, odd_dataset, weights, tmp_path):
    """--groups frames: one JPEG per 1 fps frame, in the same single decode as the CNN groups; each decodes
    to the frame the decoder gave (up to JPEG's loss), rows line up with resnet152's, statuses are shared,
    quality and size are recorded, pipeline verify checks the byte ranges."""
    import io
    import json

    from PIL import Image

    from pipeline.store.seal import seal

    store = tmp_path / "frames.zarr"
    shutil.copytree(odd_store[0], store)
    extract(config(odd_dataset, store, weights, groups=["resnet152", "frames"], jpeg_quality=95))
    s = FeatureStore(store)
    meta = s.groups["frames"]
    assert meta["params"]["quality"] == 95 and meta["params"]["short_side"] == 64 and meta["rate"] == 1.0
    assert list(s.video_status("frames")[0]) == list(s.video_status("resnet152")[0])
    i = s.video_index["good1"]
    files = s.video_files("frames", i)
    frames = decode(os.path.join(odd_dataset["video_root"], "good1.mp4"), audio=False, short_side=64).frames
    assert len(files) == len(frames) == len(s.load_group("resnet152").video(i)) == 4
    for f, want in zip(files, frames):
        got = np.asarray(Image.open(io.BytesIO(f.tobytes())))
        assert got.shape == want.shape
        mse = np.mean((got.astype(float) - want) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30  # PSNR in dB: the same picture
    assert [len(x) for x in s.video_files("frames", i, 1, 3)] == [len(x) for x in files[1:3]]
    with pytest.raises(KeyError, match="not encoded files"):
        s.video_files("resnet152", i)
    assert run_cli("verify", "--store", str(store), "--no-progress").returncode == 0
    data = store / "parts" / "p000000" / "frames" / "data" / "c" / "0" / "0"  # ranges no longer tile the bytes
    ranges = np.frombuffer(data.read_bytes(), np.int64).copy()
    ranges[1] += 1
    data.write_bytes(ranges.tobytes())
    meta = json.loads((data.parents[2] / "zarr.json").read_text())  # sealed again: only the ranges are wrong
    del meta["attributes"]["mmcache_crc32"]
    (data.parents[2] / "zarr.json").write_text(json.dumps(meta))
    seal(data.parents[2])
    r = run_cli("verify", "--store", str(store), "--no-progress")
    assert r.returncode == 1 and "byte ranges do not tile" in r.stdout, r.stdout
    small = tmp_path / "small.zarr"
    shutil.copytree(odd_store[0], small)
    extract(config(odd_dataset, small, weights, groups=["frames"], jpeg_short_side=32, jpeg_quality=50))
    f = FeatureStore(small).video_files("frames", i)[0]
    assert min(Image.open(io.BytesIO(f.tobytes())).size) == 32 and len(f) < len(files[0])


def test_text_group_ids_and_statuses(odd_store, weights):
    from gensim.models import KeyedVectors

    s = FeatureStore(odd_store[0])
    every = np.arange(s.n_clips)
    texts, status, ids = list(s.clip_values("text", every)), s.text_status(every), s.word_ids(0, s.n_clips)
    assert dict(zip(texts, status)) == {"cut the onion": "ok", "knead dough": "ok", "wheel bike": "ok",
                                        "": "empty_caption", "zzz qqq": "no_known_words", "paint the wall": "ok"}
    kv = KeyedVectors.load_word2vec_format(weights["word2vec"], binary=True)
    vectors = s.word_vectors()
    for text, i in zip(texts, ids):  # ids index the store's vectors: the same words gensim finds
        np.testing.assert_array_equal(vectors[i], kv[[w for w in text.split() if w in kv.key_to_index]]
                                      if len(i) else np.zeros((0, 300), np.float32))
    assert len(ids[texts.index("cut the onion")]) == 3
    ok = s.text_ok_per_video()
    assert ok[s.video_index["good0"]] == 2 and ok[s.video_index["good2"]] == 0  # empty caption


def test_batched_read_equals_slicing_the_loaded_group(odd_store):
    s = FeatureStore(odd_store[0])
    keys = list(s.clip_keys(np.arange(s.n_clips)))[::-1]
    assert keys[-1] == f"{s.videos['video_id'][0]}#0"
    for group in ("resnet152", "logmel"):
        g = s.load_group(group)
        got = s.read(group, keys)
        for k, arr in zip(keys, got):
            c = s.clip_index([k])[0]
            v = s.clip_video([c])[0]
            assert s.clip_rows("video", c, c + 1)[0] == v
            n = g.offsets[v + 1] - g.offsets[v]
            a = min(n, int(np.floor(s.clip_rows("start", c, c + 1)[0] * g.rate)))
            b = min(n, int(np.floor(s.clip_rows("end", c, c + 1)[0] * g.rate)) + 1)
            np.testing.assert_array_equal(arr, g.video(v)[a:b])
    with pytest.raises(KeyError, match="unknown clip key"):
        s.read("resnet152", ["nope#0"])


def test_second_run_does_no_work_and_new_group_adds_only_itself(odd_dataset, weights, tmp_path):
    store = tmp_path / "s.zarr"
    cfg = config(odd_dataset, store, weights, groups=["resnet152", "logmel"])
    assert _work_pending(cfg, ["resnet152", "logmel"])  # a new store: the cluster starts as the run begins
    assert extract(cfg)["parts_run"] == 4
    before = {p: p.stat().st_mtime_ns for p in store.glob("parts/*/resnet152")}
    assert not _work_pending(cfg, ["resnet152", "logmel"]) and _work_pending(cfg, ["davenet"])  # nothing to do:
    assert extract(cfg)["parts_run"] == 0  # no cluster is started
    summary = extract(config(odd_dataset, store, weights, groups=["davenet"], davenet=weights["davenet"]))
    assert summary["parts_run"] == 4 and summary["status"]["davenet"]["ok"] == 3
    assert {p: p.stat().st_mtime_ns for p in store.glob("parts/*/resnet152")} == before
    s = FeatureStore(store)
    assert set(s.groups) == {"resnet152", "logmel", "davenet"} and not s.groups["resnet152"]["random_init"]
    i = list(s.videos["video_id"]).index("good0")
    assert len(s.load_group("davenet").video(i)) == -(-len(s.load_group("logmel").video(i)) // 16)
    one_shot = tmp_path / "one_shot.zarr"  # davenet from the stored log-mel == davenet in the same run
    extract(config(odd_dataset, one_shot, weights, groups=["logmel", "davenet"], davenet=weights["davenet"]))
    a, b = store_arrays(store), store_arrays(one_shot)
    for k in [k for k in b if "/davenet/" in k]:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ExtractError, match="different settings"):
        extract(config(odd_dataset, store, weights, groups=["resnet152"], resnet152_weights=weights["davenet"],
                       random_init=["resnet152"]))


def test_retry_failed_picks_up_a_video_that_arrived(odd_dataset, weights, tmp_path):
    data = dict(odd_dataset, video_root=str(tmp_path / "videos"))
    shutil.copytree(odd_dataset["video_root"], data["video_root"])
    store = tmp_path / "s.zarr"
    cfg = config(data, store, weights, groups=["logmel"])
    extract(cfg)
    shutil.copy(Path(data["video_root"]) / "good0.mp4", Path(data["video_root"]) / "gone.mp4")
    assert extract(cfg)["status"]["logmel"]["missing"] == 1  # a plain rerun does no work
    cfg.retry_failed = True
    summary = extract(cfg)
    assert "missing" not in summary["status"]["logmel"] and summary["status"]["logmel"]["ok"] == 4


@pytest.mark.slow
def test_dask_workers_give_the_same_store(odd_dataset, weights, odd_store, tmp_path):
    """The same arrays and group records as one process; the workers build the video groups' extractors and
    record their provenance, the driver builds none (it only builds the text groups, which it runs)."""
    from features.registry import _BUILT

    store = tmp_path / "dask.zarr"
    _BUILT.clear()
    extract(config(odd_dataset, store, weights, workers=2))
    assert {name for name, _ in _BUILT} <= {"word2vec", "hf_text"}
    assert FeatureStore(store).groups == FeatureStore(odd_store[0]).groups
    a, b = store_arrays(odd_store[0]), store_arrays(store)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_gives_the_same_store(odd_dataset, weights, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "--manifest", odd_dataset["manifest"],
           "--captions", odd_dataset["captions"], "--video-root", odd_dataset["video_root"],
           "--resnet152-weights", weights["resnet152"], "--word2vec", weights["word2vec"],
           "--workers", "2", "--part-size", "1", "--short-side", "64", "--no-progress", "--store"]
    ref = tmp_path / "ref.zarr"
    done = subprocess.run(cmd + [str(ref)], capture_output=True, text=True)
    assert done.returncode == 1 and "--retry-failed" in done.stderr  # the odd videos failed, and it says so
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd + [str(killed)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.glob("parts/p*/resnet152")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: driver, scheduler and workers
    proc.wait()
    committed = len(list(killed.glob("parts/p*/resnet152")))
    assert 0 < committed < 7, "the kill should land mid-run"
    assert subprocess.run(cmd + [str(killed)], capture_output=True).returncode == 1
    a, b = store_arrays(ref), store_arrays(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not [p for p in killed.rglob(".tmp-*")]


def test_cleanup_removes_only_this_stores_debris(tmp_path):
    from pipeline.store import clean_temporaries

    store = tmp_path / "s.zarr"
    for d in (tmp_path / ".tmp-s.zarr-123", tmp_path / ".tmp-other-1", store / "parts" / "p000000" / ".tmp-x-9",
              store / "parts" / "p000000" / "resnet152", store / ".tmp-word2vec-3"):
        d.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")  # a store: its own level is cleaned too
    assert clean_temporaries(store) == 3
    assert (tmp_path / ".tmp-other-1").is_dir() and (store / "parts" / "p000000" / "resnet152").is_dir()


@pytest.mark.parametrize("compressed", [False, True])
def test_row_reader_matches_zarr_across_chunks(tmp_path, compressed):
    import zarr

    from pipeline.store import RowReader

    data = np.arange(40 * 4, dtype=np.float16).reshape(40, 4)
    data[6:12] = 0  # chunk 2 (rows 6..8) is all fill value: zarr does not write it
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(3, 4), dtype=data.dtype,
                            compressors="auto" if compressed else None)
    arr[...] = data
    reader = RowReader(tmp_path / "a")
    assert reader.direct is not compressed
    for a in range(0, 41, 1):
        for b in (a, a + 1, a + 5, 40):
            if b >= a:
                np.testing.assert_array_equal(reader.rows(a, min(b, 40)), data[a:min(b, 40)])
    idx = np.random.default_rng(0).integers(0, 40, 30)
    np.testing.assert_array_equal(reader.take(idx), data[idx])


def test_existing_dask_scheduler_address(odd_dataset, weights, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = extract(config(odd_dataset, tmp_path / "s.zarr", weights, groups=["logmel"],
                                 scheduler=cluster.scheduler_address))
    assert summary["parts_run"] == 4 and summary["status"]["logmel"]["ok"] == 3


def test_a_scheduler_driver_needs_no_gpu_and_cuda_parts_need_gpu_workers(odd_dataset, weights, tmp_path):
    """With --scheduler a worker chooses the precision (the driver may be a login node: another CPU, no GPU);
    --device cuda on a cluster whose workers offer no GPU resource stops at once and says how to start them (its
    parts would wait for ever); this driver has no GPU and is not asked for one."""
    from dataclasses import replace

    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cfg = config(odd_dataset, tmp_path / "s.zarr", weights, groups=["logmel"], precision="auto",
                     scheduler=cluster.scheduler_address)
        summary = extract(cfg)
        assert summary["status"]["logmel"]["ok"] == 3
        assert summary["precision_why"]["source"].endswith(f"; on a worker of the cluster ({socket.gethostname()})")
        with pytest.raises(ExtractError, match="offers the Dask resource GPU.*--nthreads 2 --resources GPU=2"):
            extract(replace(cfg, store=str(tmp_path / "gpu.zarr"), device="cuda"))


def test_the_cluster_thread_imports_nothing_the_driver_imports_meanwhile():
    """`pipeline.extract` imports no torch (`pipeline status` starts in 0.5 s), and the thread that starts the
    local cluster imports none either (its workers do, in their own processes), so the driver's own imports of
    torch and the extractors overlap the workers' start: two threads importing torch at once failed a run
    ("partially initialized module 'torch.utils'")."""
    code = ("import sys\nimport pipeline.extract as ex\nimport dask.distributed as dd\nseen = []\n"
            "dd.LocalCluster = lambda **kw: seen.append(sorted(m for m in sys.modules if m.partition('.')[0] in "
            "('torch', 'torchvision', 'features', 'pipeline') and m not in before))\n"
            "before = set(sys.modules)\n"
            "ex.Cluster(ex.ExtractConfig(manifest='m.csv', store='s.zarr', groups=['resnet152', 'logmel'], "
            "workers=1)).wait()\nprint(seen)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[['pipeline.worker']]\n"


def test_local_workers_import_their_extractors_late_imports_as_they_start(monkeypatch):
    """torchvision (imported by ResNet-152's build only) is imported as a local worker starts, beside the
    driver's planning; a group whose imports fail is left to its build, not a worker that cannot start. What
    the start imported is frozen out of the garbage collector, which is left as it was."""
    import gc

    from features import registry
    from features.frames import ResNetFrames
    from pipeline import worker
    from pipeline.extract import Cluster

    monkeypatch.setenv(worker.GROUPS, "hf_vision,resnet152,logmel")
    monkeypatch.setitem(registry.EXTRACTORS, "hf_vision", "no_such_module_here:HFVision")
    monkeypatch.setattr(ResNetFrames, "preload", ("colorsys",))
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not this test process's objects
    worker.dask_setup(None)
    assert "colorsys" in sys.modules and gc.isenabled()
    monkeypatch.undo()
    cluster = Cluster(ExtractConfig(manifest="m.csv", store="s.zarr", groups=["resnet152"], workers=1))
    try:
        found = cluster.client().run(lambda: ("torchvision" in sys.modules, gc.get_freeze_count() > 10_000))
        assert list(found.values()) == [(True, True)]
    finally:
        cluster.close()


def test_a_call_on_each_worker_survives_a_worker_gone_meanwhile(monkeypatch):
    """A worker listed, then gone (its nanny restarted it under a new address): its call runs on another worker
    instead of waiting for ever for the old address."""
    import threading

    from dask.distributed import LocalCluster

    from pipeline.extract import Cluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        cluster = Cluster(ExtractConfig(manifest="m.csv", store="s.zarr", scheduler=local.scheduler_address))
        alive = cluster.workers()
        monkeypatch.setattr(cluster, "workers", lambda: alive + ["tcp://127.0.0.1:9"])  # nothing listens there
        got = []
        call = threading.Thread(target=lambda: got.append(cluster.on_each_worker(sorted, [2, 1])), daemon=True)
        call.start()
        call.join(timeout=30)
        cluster.close()
    assert got == [[[1, 2], [1, 2]]]


def test_a_scheduler_without_workers_is_waited_for_saying_so(odd_dataset, weights, tmp_path, capsys):
    import threading

    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        later = threading.Timer(1.0, cluster.scale, (1,))  # a worker that joins later (a batch queue)
        later.start()
        summary = extract(config(odd_dataset, tmp_path / "s.zarr", weights, groups=["logmel"],
                                 scheduler=cluster.scheduler_address))
        later.join()
    assert summary["status"]["logmel"]["ok"] == 3
    said = capsys.readouterr().out
    assert f"waiting for the first worker to join the Dask scheduler {cluster.scheduler_address}" in said


def test_exit_codes_say_whether_anything_failed(odd_dataset, tmp_path):
    from pipeline.cli import main

    good = tmp_path / "good.csv"
    good.write_text("video_id\ngood0\ngood1\n")
    args = ["extract", "--manifest", str(good), "--video-root", odd_dataset["video_root"], "--groups", "logmel",
            "--workers", "0", "--no-progress", "--store"]
    assert main(args + [str(tmp_path / "ok.zarr")]) == 0
    odd = ["extract", "--manifest", odd_dataset["manifest"], "--video-root", odd_dataset["video_root"],
           "--groups", "logmel", "--workers", "0", "--no-progress", "--store", str(tmp_path / "odd.zarr")]
    assert main(odd) == 1  # finished, with failed videos
    assert main(args[:4] + [str(tmp_path / "nowhere")] + args[5:] + [str(tmp_path / "x.zarr")]) == 2
    assert not (tmp_path / "x.zarr").exists()


def test_units_are_sized_to_their_data(odd_store):
    s = FeatureStore(odd_store[0])
    for unit in sorted(u for u in Path(odd_store[0]).glob("parts/*/*") if u.is_dir()):
        arrays, _ = read_unit(unit)
        for name in ("data", "offsets", "duration"):
            on_disk = sum(f.stat().st_size for f in (unit / name / "c").rglob("*") if f.is_file())
            assert on_disk in (0, arrays[name].nbytes), (unit, name)  # 0: all fill value; was >= 1 MB per array
    clips = sum(f.stat().st_size for f in (Path(odd_store[0]) / "clips" / "start" / "c").rglob("*") if f.is_file())
    assert clips == 8 * s.n_clips


@pytest.mark.slow  # two extractions at once, 10 s (fast tier < 4 min)
def test_concurrent_extractions_keep_every_group_and_each_others_temporaries(odd_dataset, weights, tmp_path):
    base = [sys.executable, "-m", "pipeline.cli", "extract", "--manifest", odd_dataset["manifest"],
            "--captions", odd_dataset["captions"], "--video-root", odd_dataset["video_root"],
            "--resnet152-weights", weights["resnet152"], "--workers", "0", "--part-size", "1",
            "--short-side", "64", "--no-progress", "--store", str(tmp_path / "s.zarr")]
    runs = [base + ["--groups", "resnet152"], base + ["--groups", "logmel"], base + ["--groups", "logmel"]]
    procs = [subprocess.Popen(r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in runs]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 1 and "Traceback" not in err, err  # 1: the odd videos failed, as they should
    s = FeatureStore(tmp_path / "s.zarr")
    assert set(s.groups) == {"resnet152", "logmel"}  # neither run's record overwrote the other's
    assert s.video_status("resnet152")[0].tolist().count("ok") == 4
    assert s.video_status("logmel")[0].tolist().count("ok") == 3
    assert not list((tmp_path / "s.zarr").rglob(".tmp-*"))
    with pytest.raises(ExtractError, match="different settings"):  # and a mismatched rerun is still refused
        extract(config(odd_dataset, tmp_path / "s.zarr", weights, groups=["resnet152"], random_init=["resnet152"]))


def test_cleanup_waits_while_another_extraction_runs(tmp_path):
    from pipeline.store import StoreLock, clean_temporaries

    store = tmp_path / "s.zarr"
    debris = tmp_path / ".tmp-s.zarr-111"  # a killed run's planning temp
    debris.mkdir()
    first, second = StoreLock(store), StoreLock(store)
    assert first.run(clean=lambda: clean_temporaries(store)) is True  # alone: cleans debris, at its start
    assert not debris.exists()
    live = tmp_path / ".tmp-s.zarr-222"  # the second run, started later, plans into its own temp
    live.mkdir()
    assert second.run(clean=lambda: clean_temporaries(store)) is False  # not alone: cleans nothing
    assert live.exists()  # and the first run never cleans again (it did so while alone, before anyone came)
    first.close()
    second.close()
    assert StoreLock(store).run() is True
    other = tmp_path / "not-a-store"
    (other / ".tmp-mine").mkdir(parents=True)
    clean_temporaries(other)  # a folder that is not a store is never cleaned inside
    assert (other / ".tmp-mine").exists()


def test_truncated_video_keeps_its_decodable_part(real_videos, weights, tmp_path):
    import json

    from trainers.clips import ClipSpec
    from trainers.data import ClipReader

    v = tmp_path / "videos"
    v.mkdir()
    data = real_videos["v_GGSY1Qvo990"].read_bytes()
    (v / "full.mp4").write_bytes(data)
    (v / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "m.csv").write_text("video_id\nfull\ncut\n")
    caps = {"start": [0.0, 12.0], "end": [5.0, 16.0], "text": ["cut the onion", "knead dough"]}
    (tmp_path / "c.json").write_text(json.dumps({"full": caps, "cut": caps}))
    data = {"manifest": str(tmp_path / "m.csv"), "captions": str(tmp_path / "c.json"), "video_root": str(v)}
    summary = extract(config(data, tmp_path / "s.zarr", weights, groups=["resnet152", "logmel"], word2vec=None))
    assert summary["status"]["resnet152"] == {"ok": 1, "truncated": 1}
    s = FeatureStore(tmp_path / "s.zarr")
    i = list(s.videos["video_id"]).index("cut")
    status, error = s.video_status("logmel")
    assert status[i] == "truncated" and error[i].startswith("truncated: decoded")
    assert 8.5 < s.video_duration("resnet152")[i] < 9.3 and s.video_ok("resnet152")[i]
    cut, full = s.video_rows("resnet152", i)(), s.video_rows("resnet152", 1 - i)()
    assert len(cut) == 9 and len(full) == 18
    np.testing.assert_allclose(cut[:8].astype(np.float32), full[:8].astype(np.float32), atol=2e-3)
    reader = ClipReader(s, ClipSpec("v", min_time=0.0))  # its clip after the break is dropped, the first kept
    assert reader.usable_count[i] == 1 and reader.dropped() == {"clip starts after the video ends": 1}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)


@pytest.mark.slow  # 11 s: every unit damaged in turn, then repaired (fast tier < 4 min)
def test_verify_finds_each_damaged_unit_readers_refuse_it_and_repair_recomputes_it(odd_store, odd_dataset,
                                                                                  weights, tmp_path):
    from pipeline.store import StoreError

    store = tmp_path / "copy.zarr"
    shutil.copytree(odd_store[0], store)
    before = store_arrays(store)
    assert run_cli("verify", "--store", str(store), "--no-progress").returncode == 0
    p0, p1 = store / "parts" / "p000000", store / "parts" / "p000001"
    chunk = p0 / "resnet152" / "data" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[10:12] = np.array([np.nan], np.float16).tobytes()  # a NaN payload
    chunk.write_bytes(data)
    (p0 / "logmel" / "data" / "c" / "0" / "0").unlink()  # a deleted chunk: Zarr would read zeros
    offsets = p1 / "resnet152" / "offsets" / "c" / "0"
    offsets.write_bytes(offsets.read_bytes()[:-8])  # a truncated offsets array
    (store / "word2vec" / "ids" / "c" / "0").unlink()
    s = FeatureStore(store)
    with pytest.raises(StoreError, match=r"logmel/data/c/0/0: chunk file missing.*pipeline verify --store"):
        s.video_rows("logmel", 0)()
    with pytest.raises(StoreError, match="offsets/c/0: 16 bytes, a chunk is 24"):
        s.video_rows("resnet152", 2)()

    r = run_cli("verify", "--store", str(store), "--no-progress")
    assert r.returncode == 1 and "4 damaged" in r.stdout and "--repair" in r.stderr
    for unit, why in ((p0 / "resnet152", "checksum mismatch"), (p0 / "logmel", "chunk file missing"),
                      (p1 / "resnet152", "truncated or overwritten"), (store / "word2vec", "chunk file missing")):
        assert f"DAMAGED {unit}\n" in r.stdout and why in r.stdout.split(f"DAMAGED {unit}\n")[1].split("DAMAGED")[0]
    r = run_cli("verify", "--store", str(store), "--no-progress", "--repair")
    assert r.returncode == 0 and r.stdout.count("  removed ") == 4, r.stdout + r.stderr
    extract(config(odd_dataset, store, weights))  # recomputes exactly the removed units
    after = store_arrays(store)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert run_cli("verify", "--store", str(store), "--no-progress").returncode == 0


def test_verify_reports_a_damaged_plan_that_cannot_be_recomputed(odd_store, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(odd_store[0], store)
    chunk = store / "videos" / "clip_offsets" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:8] + b"\xff" * 8 + chunk.read_bytes()[16:])
    r = run_cli("verify", "--store", str(store), "--no-progress", "--repair")
    assert r.returncode == 1 and f"DAMAGED {store / 'videos'}" in r.stdout and "plan a new store" in r.stderr
    assert (store / "videos").is_dir()  # never removed


def test_disk_full_is_one_clear_line_leaves_no_debris_and_the_rerun_resumes(odd_store, odd_dataset, weights,
                                                                            tmp_path, monkeypatch, capsys):
    import errno

    import zarr.storage._local as local

    from pipeline.cli import main

    real, writes = local._put, []

    def put(path, value, exclusive=False):  # the disk fills up during the second part's features
        if "parts/p000001" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        writes.append(path)
        return real(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)
    store = tmp_path / "full.zarr"
    args = ["extract", "--manifest", odd_dataset["manifest"], "--captions", odd_dataset["captions"],
            "--video-root", odd_dataset["video_root"], "--store", str(store), "--resnet152-weights",
            weights["resnet152"], "--word2vec", weights["word2vec"], "--workers", "0", "--part-size", "2",
            "--short-side", "64", "--precision", "fp32", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: disk full while writing {store}/parts/p000001/resnet152 ({err.split('(')[1].split(')')[0]}): "
        "free space or move the store, then rerun the same command; every unit finished before is kept and "
        "the run resumes"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]  # no debris
    assert (store / "parts" / "p000000" / "resnet152").is_dir() and writes  # finished units kept
    monkeypatch.setattr(local, "_put", real)
    assert main(args) == 1  # resumes (exit 1: the odd dataset has failed videos)
    after, before = store_arrays(store), store_arrays(odd_store[0])
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.slow  # 12 s (fast tier < 4 min)
def test_3d_and_hf_groups_extract_in_the_same_decode_as_direct_calls(odd_dataset, weights, tmp_path):
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipeline.decode import FrameStream

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8,
                                                   projection_dim=16)).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    cfg = config(odd_dataset, tmp_path / "s.zarr", weights, groups=["r3d_18", "hf_vision"], word2vec=None,
                 weights={"r3d_18": weights["r3d_18"], "hf_vision": str(tmp_path / "clip")})
    summary = extract(cfg)
    assert summary["status"]["r3d_18"] == {"ok": 4, "decode_error": 2, "missing": 1} == summary["status"]["hf_vision"]
    s = FeatureStore(tmp_path / "s.zarr")
    assert s.groups["r3d_18"]["rate"] == 1.5 and s.groups["r3d_18"]["dim"] == 512
    assert s.groups["hf_vision"]["weights_sha256"] and s.rate("hf_vision") == 1.0
    i = list(s.videos["video_id"]).index("good1")
    path = os.path.join(odd_dataset["video_root"], "good1.mp4")
    dense = []
    decode(path, frames=False, audio=False, streams=[FrameStream(24, 112, dense.extend)])
    assert len(dense) == 96 and dense[0].shape == (112, 168, 3)  # 4 s at 24 fps, short side 112
    opts = Options(weights=(("r3d_18", weights["r3d_18"]), ("hf_vision", str(tmp_path / "clip"))), short_side=64)
    expected = extractor("r3d_18", opts)(np.stack(dense).reshape(6, 16, 112, 168, 3))
    np.testing.assert_allclose(s.video_rows("r3d_18", i)().astype(np.float32), expected, atol=2e-3)
    frames = decode(path, audio=False, short_side=64).frames
    np.testing.assert_allclose(s.video_rows("hf_vision", i)().astype(np.float32),
                               extractor("hf_vision", opts)(frames), atol=2e-3)


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_export_import_round_trip_then_train_and_eval(odd_store, odd_dataset, weights, tmp_path, fmt):
    from trainers.evaluate import evaluate
    from trainers.methods.mcn import MCNConfig
    from trainers.train import train

    out = tmp_path / ("feats" if fmt == "npy" else "feats.h5")
    r = run_cli("export", "--store", str(odd_store[0]), "--group", "resnet152", "--format", fmt, "--out", str(out),
                "--no-progress")
    assert r.returncode == 0 and "wrote 4 videos" in r.stdout, r.stderr
    store = tmp_path / "imported.zarr"
    r = run_cli("import", "--manifest", odd_dataset["manifest"], "--captions", odd_dataset["captions"], "--store",
                str(store), "--features", str(out), "--group", "resnet152", "--part-size", "2", "--no-progress")
    assert r.returncode == 1 and "missing=3, ok=4" in r.stdout, r.stdout + r.stderr  # the 3 that had none
    src, dst = FeatureStore(odd_store[0]), FeatureStore(store)
    assert list(dst.videos["video_id"]) == list(src.videos["video_id"])
    for v in range(src.n_videos):
        if src.video_ok("resnet152")[v]:
            np.testing.assert_array_equal(dst.video_rows("resnet152", v)(), src.video_rows("resnet152", v)())
    status, error = dst.video_status("resnet152")
    gone = list(dst.videos["video_id"]).index("gone")
    assert status[gone] == "missing" and "no features at" in error[gone]
    assert dst.groups["resnet152"]["extractor"].startswith("imported from")
    extract(config(odd_dataset, store, weights, groups=["word2vec"]))  # captions' words, still no video read
    train(MCNConfig(store=str(store), out=str(tmp_path / "run"), combo="vt", dim=32, videos_per_batch=2,
                    clips_per_video=2, steps=6, warmup=2, min_time=0.0, clusters=2, cluster_every=2, queue_steps=1,
                    loader_workers=0), progress=False)
    assert evaluate(tmp_path / "run", str(store))["retrieval"]["t->v"]["N"] > 0


def test_import_never_unpickles_and_reports_bad_arrays(tmp_path):
    from pipeline.transfer import BadFeatures, Source

    d = tmp_path / "feats"
    d.mkdir()
    np.save(d / "pickled.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    np.save(d / "flat.npy", np.zeros(5, np.float32))
    np.save(d / "nan.npy", np.full((3, 4), np.nan, np.float32))
    np.save(d / "good.npy", np.ones((3, 4), np.float32))
    src = Source(d)
    for vid, why in (("pickled", "cannot read"), ("flat", "need \\(T, D\\)"), ("nan", "nan/inf")):
        with pytest.raises(BadFeatures, match=why):
            src.get(vid)
    assert src.get("absent") is None and src.get("good").shape == (3, 4)


def test_ffmpeg_decoder_extracts_the_same_store(odd_store, odd_dataset, weights, tmp_path):
    store = tmp_path / "ffmpeg.zarr"
    summary = extract(config(odd_dataset, store, weights, groups=["resnet152", "logmel"], decoder="ffmpeg"))
    assert summary["status"]["resnet152"] == {"ok": 4, "decode_error": 2, "missing": 1}
    assert FeatureStore(store).groups["resnet152"]["params"]["decoder"] == "ffmpeg"
    a, b = store_arrays(store), store_arrays(odd_store[0])
    for k in [k for k in a if k.startswith("parts/") and k.rsplit("/", 1)[1] in ("data", "offsets", "status")]:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # one decoder per store: it is recorded, and the refusal names the one setting that differs
    with pytest.raises(ExtractError, match=r"different settings \(store -> now\): params.decoder: 'ffmpeg' -> "
                                           r"'pyav'\. Use a new --store"):
        extract(config(odd_dataset, store, weights, groups=["resnet152"]))
    with pytest.raises(ExtractError, match="--hwaccel cuda is an ffmpeg CLI option: pass --decoder ffmpeg"):
        extract(config(odd_dataset, tmp_path / "hw.zarr", weights, hwaccel="cuda"))


def test_hf_text_group_embeds_every_caption_as_transformers_does(odd_dataset, weights, tmp_path):
    import torch
    from transformers import AutoTokenizer

    model = tiny_text_model(tmp_path / "bert")
    store = tmp_path / "t.zarr"
    summary = extract(config(odd_dataset, store, weights, groups=["hf_text"], word2vec=None,
                             weights={"hf_text": str(tmp_path / "bert")}))
    assert summary["text"]["hf_text"] == {"ok": 5, "empty_caption": 1}
    s = FeatureStore(store)
    texts = list(s.clip_values("text", np.arange(s.n_clips)))
    tok = AutoTokenizer.from_pretrained(tmp_path / "bert")
    with torch.no_grad():
        for c, text in enumerate(texts):
            enc = tok([text], return_tensors="pt")
            ref = torch.nn.functional.normalize(model.eval()(**enc).last_hidden_state.mean(1), dim=1)[0].numpy()
            np.testing.assert_allclose(s.clip_text("hf_text", [c])[0].astype(np.float32), ref, atol=2e-3)
            ids = zarr_ids(store, c)
            np.testing.assert_array_equal(ids, enc["input_ids"][0].numpy())
    assert run_cli("verify", "--store", str(store), "--no-progress").returncode == 0
    assert "hf_text    per clip; empty_caption=1, ok=5" in run_cli("status", "--store", str(store)).stdout


def zarr_ids(store, c):
    import zarr

    g = zarr.open_group(str(store / "text" / "hf_text"), mode="r")
    return g["ids"][int(g["offsets"][c]):int(g["offsets"][c + 1])]


def test_precision_is_recorded_and_a_store_never_mixes_precisions(odd_dataset, weights, tmp_path):
    store = tmp_path / "bf16.zarr"
    extract(config(odd_dataset, store, weights, groups=["resnet152"], precision="bf16"))
    assert FeatureStore(store).groups["resnet152"]["params"]["precision"] == "bf16"
    with pytest.raises(ExtractError, match="different settings"):
        extract(config(odd_dataset, store, weights, groups=["resnet152"], precision="fp32"))
    # auto keeps the store's precision, whatever this machine's probe would say; the batch follows it
    again = extract(config(odd_dataset, store, weights, groups=["resnet152", "logmel"], precision="auto"))
    assert (again["precision"], again["batch_size"]) == ("bf16", 8) and "extracted in" in again["precision_why"]["source"]
    assert FeatureStore(store).attrs["precision_choice"]["precision"] == "bf16"  # recorded with the new group


@pytest.mark.slow
def test_dashboard_is_started_and_its_address_printed(odd_dataset, weights, tmp_path, capsys):
    import urllib.request

    summary = extract(config(odd_dataset, tmp_path / "d.zarr", weights, groups=["logmel"], word2vec=None,
                             workers=1, dashboard=True))
    link = summary["dashboard"]
    assert link.startswith("http://") and link.endswith("/status") and f"Dask dashboard: {link}" in capsys.readouterr().out
    with pytest.raises(OSError):  # the local cluster (and its dashboard) is gone when the run ends
        urllib.request.urlopen(link, timeout=2)


def test_a_rerun_summary_still_lists_the_text_groups(odd_store, odd_dataset, weights, capsys):
    from pipeline.cli import print_summary

    first = odd_store[1]["text"]["word2vec"]
    again = extract(config(odd_dataset, odd_store[0], weights))  # nothing to do
    assert again["parts_run"] == 0 and again["text"]["word2vec"] == first == {
        "ok": 4, "empty_caption": 1, "no_known_words": 1}
    assert FeatureStore(odd_store[0]).text_status_counts() == first  # recorded with the unit
    print_summary(again)
    assert "  word2vec   empty_caption=1, no_known_words=1, ok=4" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: a decode process, 9 s
def test_decode_workers_feed_one_model_and_give_the_same_store(odd_dataset, weights, odd_store, tmp_path, workers):
    """--decode-workers (the CUDA default): videos decode in DataLoader processes while the task's own process
    runs the models on frames from several videos at once; in-process and on a Dask worker, the same store."""
    store = tmp_path / "pool.zarr"
    summary = extract(config(odd_dataset, store, weights, workers=workers, decode_workers=2))
    assert summary["decode_workers"] == 2
    assert summary["status"] == odd_store[1]["status"]
    a, b = store_arrays(odd_store[0]), store_arrays(store)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f" and "resnet152" in k:  # batches may hold the videos in another order
            np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3, err_msg=k)
        else:  # the log-mel, statuses, messages, offsets: exact
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_time_inside_tasks_is_the_union_of_their_spans():
    """A worker runs parts at once: the summary's task_seconds counts the time in which any task ran, once."""
    from pipeline.extract import _covered

    assert _covered([]) == 0
    assert _covered([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0  # overlapping, then apart
    assert _covered([(1.0, 3.0), (0.0, 10.0)]) == 10.0  # one inside another, in any order
    assert _covered([(0.0, 1.0), (1.0, 2.0)]) == 2.0  # touching


@pytest.mark.parametrize("processes", [0, 2])
def test_each_decoder_takes_the_next_video_largest_first_each_video_once(odd_dataset, processes):
    """A part's decoders (the threads of NVDEC's sessions, the processes of --decode-workers) take the next video
    as each finishes one, the largest file first (a decoder left with a long video at the end idles the others):
    every video is decoded exactly once, whichever decoder takes it, failures included."""
    from features.base import AUDIO, CLIP_FRAMES, FRAMES, LOGMEL
    from pipeline.part import Batcher, DecodePlan, PartJob, _Decodes, _fed, _longest_first, _pooled

    root = Path(odd_dataset["video_root"])
    paths = [str(p) for p in sorted(root.glob("*.mp4"))] + [str(root / "gone.mp4")]
    sizes = [os.path.getsize(p) if os.path.isfile(p) else -1 for p in paths]
    order = _longest_first(paths)
    assert [sizes[i] for i in order] == sorted(sizes, reverse=True) and paths[order[-1]].endswith("gone.mp4")

    job = PartJob("", 0, [(Path(p).stem, p) for p in paths], [], Options())
    plan = DecodePlan(frames=True, clips=(), audio=True, mel=False, raw_audio=False, opts=Options(short_side=64),
                      at_once=1 if processes else 3)
    decodes = _Decodes(job, plan, shared=True)
    assert decodes.order == order
    of = {kind: [] for kind in (FRAMES, CLIP_FRAMES, AUDIO, LOGMEL)}
    batcher = Batcher({}, 8)
    done = list(_pooled(decodes, batcher, of, processes) if processes else _fed(decodes, batcher, of))
    assert sorted(i for i, _ in done) == list(range(len(paths)))  # each once
    for i, d in done:
        name = Path(paths[i]).stem
        if name.startswith("good") or name in ("long", "silent"):
            assert d.failure is None and d.dec.duration == decode(paths[i], audio=False).duration, name
        elif name in ("empty", "gone"):
            assert d.failure is not None and d.failure.status in ("decode_error", "missing"), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run there with: pytest -k cuda)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_extraction_on_a_gpu_worker_gives_the_cpu_store(odd_dataset, weights, odd_store, tmp_path, precision):
    """--device cuda as a user runs it: one Dask worker holding the GPU, decoding in --decode-workers processes
    (the CUDA default), the models on the GPU. The same statuses and log-mel as the CPU store; the same
    ResNet-152 features to fp32's TF32 rounding (cuDNN's default) or, in bf16, per-row cosine >= 0.999."""
    store = tmp_path / "gpu.zarr"
    summary = extract(config(odd_dataset, store, weights, device="cuda", workers=None, precision=precision))
    assert summary["status"] == odd_store[1]["status"] and summary["decode_workers"] >= 1
    a, b = store_arrays(odd_store[0]), store_arrays(store)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f" and "resnet152" in k:
            x, y = a[k].astype(np.float32), b[k].astype(np.float32)
            if precision == "fp32" or x.ndim < 2:
                np.testing.assert_allclose(x, y, atol=2e-3, err_msg=k)
            else:
                assert ((x * y).sum(1) >= 0.999 * np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)).all(), k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_decode_workers_on_daemonic_scheduler_workers_say_how_to_start_them(odd_dataset, weights, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = extract(config(odd_dataset, tmp_path / "s.zarr", weights, groups=["logmel"], decode_workers=2,
                                 scheduler=cluster.scheduler_address))
    assert summary["failed_parts"] and all("DASK_DISTRIBUTED__WORKER__DAEMON=False" in e
                                           for e in summary["failed_parts"].values())


def test_batcher_fills_every_forward_across_videos_in_frame_order():
    """Frames of three videos (5, 3 and 9 frames, one changing size mid-video) through forwards of 4: every
    forward but the last per size is full, and each video's rows equal a forward of its own frames."""
    from pipeline.part import Batcher

    class Means:  # a stand-in model: one row per frame, its mean pixel, recording each forward's size
        consumes, dim, dtype, sizes = "frames", 1, np.float16, []

        def __call__(self, x):
            self.sizes.append(len(x))
            return x.reshape(len(x), -1).mean(1, keepdims=True).astype(np.float32)

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (5, 4, 6, 3)), rng.integers(0, 255, (3, 4, 6, 3)),
              [rng.integers(0, 255, (4, 4, 6, 3)), rng.integers(0, 255, (5, 6, 4, 3))]]
    model = Means()
    b = Batcher({"g": model}, 4)
    for i, v in enumerate(videos):
        for part in (v if isinstance(v, list) else [v[:2], v[2:]]):
            b.feed(i, ["g"], np.asarray(part, np.uint8))
    b.flush()
    assert model.sizes == [4, 4, 4, 4, 1]  # 12 frames of one size in 3 full forwards, 5 of the other in 4 + 1
    for i, v in enumerate(videos):
        frames = np.concatenate([x.reshape(len(x), -1) for x in (v if isinstance(v, list) else [v])])
        np.testing.assert_allclose(b.result("g", i)[:, 0], frames.mean(1).astype(np.float16), rtol=1e-3)


def test_extract_flags_are_the_config_dataclass(tmp_path):
    """`pipeline extract` builds its flags from ExtractConfig, as the trainers do from theirs
    (pipeline/config.py): lists, GROUP=PATH pairs, choices, --no-x, --config with flags over it."""
    import json
    from dataclasses import fields

    from pipeline.cli import build_parser
    from pipeline.config import config_from_args, field_comments

    p = build_parser()
    sub = p._subparsers._group_actions[0].choices["extract"]
    args = p.parse_args(["extract", "--manifest", "m.csv", "--store", "s.zarr", "--groups", "resnet152,frames",
                         "--weights", "hf_text=/x", "--weights", "r3d_18=/y.pth", "--no-progress", "--precision", "fp32"])
    cfg = config_from_args(ExtractConfig, args, sub)
    assert (cfg.groups, cfg.weights, cfg.progress, cfg.precision, cfg.batch_size) == (
        ["resnet152", "frames"], {"hf_text": "/x", "r3d_18": "/y.pth"}, False, "fp32", None)  # None: by precision
    assert all(field_comments(ExtractConfig).get(f.name) for f in fields(ExtractConfig))
    saved = tmp_path / "extract.json"
    saved.write_text(json.dumps({"manifest": "a.csv", "store": "b.zarr", "batch_size": 64, "weights": {"x": "1"}}))
    cfg = config_from_args(ExtractConfig, p.parse_args(["extract", "--config", str(saved), "--batch-size", "8",
                                                        "--weights", "y=2"]), sub)
    assert (cfg.manifest, cfg.store, cfg.batch_size, cfg.weights) == ("a.csv", "b.zarr", 8, {"x": "1", "y": "2"})
    for bad in (["--manifest", "m", "--store", "s", "--precision", "fp64"], ["--store", "s"]):
        with pytest.raises(SystemExit):
            config_from_args(ExtractConfig, p.parse_args(["extract", *bad]), sub)


def test_status_json_is_json_alone_and_a_closed_pipe_is_no_traceback(odd_store, tmp_path):
    import json

    store, _ = odd_store
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["groups"]["resnet152"]["status"]["ok"] == 4
    # a reader that stops early (`| head -1`) while the command still writes: exit 0, nothing on stderr
    script = ("import pipeline.cli as c\n"
              "c.cmd_status = lambda args: [print('x' * 100) for _ in range(20000)] and 0\n"
              f"raise SystemExit(c.main(['status', '--store', {str(store)!r}]))\n")
    done = subprocess.run(f"{sys.executable} -c {shlex.quote(script)} | head -1", shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert done.stdout == "x" * 100 + "\n" and "Traceback" not in done.stderr and done.stderr == "", done.stderr


def test_a_moved_store_and_moved_videos_extract_a_new_group_with_every_video_found(odd_dataset, weights, tmp_path,
                                                                                  monkeypatch):
    """Paths are recorded relative to the video root (and the root itself): the store copied to another folder,
    the videos moved elsewhere, run from a third folder, `--video-root NEW` adds a group with every video
    found as before, and the committed group is not recomputed."""
    import shutil

    first = tmp_path / "a"
    shutil.copytree(Path(odd_dataset["video_root"]), first / "videos")
    monkeypatch.chdir(tmp_path)
    cfg = config(odd_dataset, "a/s.zarr", weights, video_root="a/videos", groups=["logmel"], word2vec=None)
    extract(cfg)
    s = FeatureStore(tmp_path / "a" / "s.zarr")
    assert s.videos["path"][0] == "good0.mp4" and s.meta["video_root"] == str(first / "videos")
    before = s.video_status("logmel")[0].tolist()
    shutil.copytree(first / "s.zarr", tmp_path / "b" / "copy.zarr")
    shutil.move(first / "videos", tmp_path / "elsewhere")
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    logmel = sorted((tmp_path / "b" / "copy.zarr" / "parts").glob("*/logmel/zarr.json"))
    stamps = [p.stat().st_mtime_ns for p in logmel]
    again = config(odd_dataset, "../b/copy.zarr", weights, video_root="../elsewhere", groups=["logmel", "resnet152"],
                   word2vec=None)
    extract(again)
    s = FeatureStore(tmp_path / "b" / "copy.zarr")
    after = s.video_status("resnet152")[0].tolist()  # every video found where it moved: 'missing' only for 'gone'
    assert [x == "missing" for x in after] == [x == "missing" for x in before] and after.count("missing") == 1
    assert after.count("ok") == 4, after  # good0-2, silent (frames without audio)
    assert [p.stat().st_mtime_ns for p in logmel] == stamps  # the committed group untouched
    reloc = tmp_path / "d"
    shutil.copytree(tmp_path / "elsewhere", reloc / "nested" / "deeper")  # another layout: found by video id
    (tmp_path / "b" / "copy.zarr").rename(tmp_path / "b" / "third.zarr")
    extract(config(odd_dataset, "../b/third.zarr", weights, video_root=str(reloc), groups=["logmel", "resnet152"],
                   word2vec=None, retry_failed=True))
    assert FeatureStore(tmp_path / "b" / "third.zarr").video_status("resnet152")[0].tolist() == after


@pytest.mark.slow
def test_cli_scheduler_and_worker_in_other_folders_with_a_relative_store(odd_dataset, weights, tmp_path):
    """`dask scheduler` and `dask worker` started from two other folders, the driver from a third with a
    relative --store (and relative weights): the parts land in the driver's store, identical to a local run."""
    import subprocess
    import sys
    import time

    bin_ = Path(sys.executable).parent
    for d in ("sched", "work", "drive"):
        (tmp_path / d).mkdir()
    sfile = tmp_path / "sched" / "scheduler.json"
    procs = [subprocess.Popen([str(bin_ / "dask"), "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(sfile)], cwd=tmp_path / "sched", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(200):
            if sfile.is_file() and sfile.stat().st_size:
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([str(bin_ / "dask"), "worker", "--scheduler-file", str(sfile), "--nthreads", "1",
                                       "--no-dashboard"], cwd=tmp_path / "work", stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        address = json.loads(sfile.read_text())["address"]
        shutil.copy(weights["resnet152"], tmp_path / "drive" / "r152.pth")
        args = [str(bin_ / "pipeline"), "extract", "--manifest", odd_dataset["manifest"], "--captions",
                odd_dataset["captions"], "--video-root", odd_dataset["video_root"], "--store", "s.zarr",
                "--groups", "resnet152,logmel", "--resnet152-weights", "r152.pth", "--part-size", "2",
                "--short-side", "64", "--precision", "fp32", "--scheduler", address, "--threads-per-worker", "1",
                "--no-progress"]
        done = subprocess.run(args, cwd=tmp_path / "drive", capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr  # the odd dataset's bad videos: finished with failures
    finally:
        for p in procs:
            p.terminate()
    assert not (tmp_path / "work" / "s.zarr").exists()
    local = config(odd_dataset, tmp_path / "local.zarr", weights, groups=["resnet152", "logmel"], word2vec=None,
                   threads_per_worker=1)  # the same sums in the same order: bit-identical float16 rows
    extract(local)
    ours, theirs = store_arrays(tmp_path / "drive" / "s.zarr"), store_arrays(tmp_path / "local.zarr")
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_a_worker_that_cannot_see_the_store_says_so(tmp_path):
    from features.base import Options
    from pipeline.part import PartJob, run_part

    with pytest.raises(FileNotFoundError, match="cannot see the store .*nowhere.zarr: run every Dask worker"):
        run_part(PartJob(str(tmp_path / "nowhere.zarr"), 0, [("v", "/x.mp4")], ["logmel"], Options(), 1))


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")  # zarr's own note on the format
def test_a_consolidated_view_is_not_left_stale_by_a_later_extraction(odd_dataset, weights, tmp_path):
    import zarr

    store = tmp_path / "s.zarr"
    extract(config(odd_dataset, store, weights, groups=["logmel"], word2vec=None))
    zarr.consolidate_metadata(str(store))
    assert "parts/p000000/logmel/data" in zarr.open_consolidated(str(store), mode="r")
    extract(config(odd_dataset, store, weights, groups=["logmel", "resnet152"], word2vec=None))
    view = zarr.open_group(str(store), mode="r")  # zarr prefers a consolidated block where there is one
    assert "parts/p000000/resnet152/data" in view and "status/resnet152/status" in view


def test_status_names_why_a_part_is_still_pending(odd_dataset, weights, tmp_path, monkeypatch, capsys):
    import pipeline.part as part
    from pipeline.cli import main

    store = tmp_path / "s.zarr"
    real = part.run_part

    def broken(job):
        if job.part == 1:
            raise MemoryError("the worker ran out of memory")
        return real(job)

    monkeypatch.setattr(part, "run_part", broken)
    summary = extract(config(odd_dataset, store, weights, groups=["logmel"], word2vec=None))
    assert summary["failed_parts"] == {1: "MemoryError: the worker ran out of memory"}
    assert main(["status", "--store", str(store)]) == 0
    assert "part 1: MemoryError: the worker ran out of memory" in capsys.readouterr().out
    assert main(["status", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed_parts"] == {"1": "MemoryError: the worker ran out of memory"}
    monkeypatch.setattr(part, "run_part", real)
    extract(config(odd_dataset, store, weights, groups=["logmel"], word2vec=None))
    assert main(["status", "--store", str(store), "--json"]) == 0
    assert "failed_parts" not in json.loads(capsys.readouterr().out)  # the rerun finished part 1
