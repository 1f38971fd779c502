"""Shared fixtures: real sample videos, generated odd videos, and weights files in their real formats."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pipeline.demo import write_video

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory):
    """The precision probe's per-machine cache in a temporary file, never the user's ~/.cache (subprocesses
    inherit it): the first extraction with --precision auto probes, the rest read its figures."""
    import os

    path = tmp_path_factory.mktemp("cache") / "probe.json"
    old = os.environ.get("MMCACHE_PROBE_CACHE")
    os.environ["MMCACHE_PROBE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MMCACHE_PROBE_CACHE", None)
    else:
        os.environ["MMCACHE_PROBE_CACHE"] = old


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (run there with: pytest -k cuda)"))])
def device(request) -> str:
    """A test taking ``device`` runs on the CPU, and again on CUDA where a GPU is visible."""
    return request.param


@pytest.fixture(scope="session")
def real_videos() -> dict[str, Path]:
    paths = {p.stem: p for p in sorted(REAL_VIDEOS.glob("*.mp4"))}
    if len(paths) < 2:
        pytest.skip(f"the real sample videos are not here ({REAL_VIDEOS}: shared/ beside the checkout)")
    return paths


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, str]:
    """A torchvision ResNet-152 state_dict, a DAVEnet state_dict and a GoogleNews-style word2vec .bin."""
    from gensim.models import KeyedVectors

    from features.davenet import DAVEnet

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), d / "resnet152.pth")
    torch.save(DAVEnet().state_dict(), d / "davenet.pth")
    torch.save(torchvision.models.video.r3d_18(weights=None).state_dict(), d / "r3d_18.pth")
    words = ["the", "onion", "cut", "New_York", "knead", "dough", "wheel", "bike", "paint", "wall", "tree"]
    kv = KeyedVectors(vector_size=300)
    kv.add_vectors(words, np.random.default_rng(0).normal(size=(len(words), 300)).astype(np.float32))
    kv.save_word2vec_format(str(d / "w2v.bin"), binary=True)
    return {"resnet152": str(d / "resnet152.pth"), "davenet": str(d / "davenet.pth"), "word2vec": str(d / "w2v.bin"),
            "r3d_18": str(d / "r3d_18.pth")}


@pytest.fixture(scope="session")
def odd_dataset(tmp_path_factory) -> dict[str, str]:
    """A HowTo100M-style manifest with good, silent, truncated, empty, missing videos and bad rows."""
    d = tmp_path_factory.mktemp("odd")
    v = d / "videos"
    v.mkdir()
    for i in range(3):
        write_video(v / f"good{i}.mp4", 4.0, (40 * i, 100, 200), 440.0 * (i + 1), size=(96, 64), seed=i)
    write_video(v / "silent.mp4", 3.0, (10, 200, 10), None, size=(96, 64), seed=7)
    write_video(v / "long.mp4", 12.0, (200, 10, 10), 300.0, size=(96, 64), seed=8)
    data = (v / "long.mp4").read_bytes()
    (v / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (v / "empty.mp4").write_bytes(b"")
    rows = [["video_id", "category_1", "category_2", "rank", "task_id"],
            ["good0", "Food", "Bread", "1", "10"], ["good1", "Food", "Bread", "2", "10"],
            ["", "Food", "x", "3", "11"],  # line 4: missing id
            ["good2", "Vehicles", "Bike", "1", "20"], ["silent", "Vehicles", "Bike", "2", "20"],
            ["truncated", "Home", "Paint", "1", "30"], ["empty", "Home", "Paint", "2", "30"],
            ["gone", "Home", "Paint", "3", "30"]]  # line 9: no file
    with open(d / "howto.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    captions = {
        "good0": {"start": [0.0, 2.0], "end": [2.0, 4.0], "text": ["cut the onion", "knead dough"]},
        "good1": {"start": [0.5, 3.0], "end": [1.5, 2.0], "text": ["wheel bike", "bad time"]},  # [1] end<start
        "good2": {"start": [0.0], "end": [3.0], "text": [""]},  # empty caption
        "silent": {"start": [0.0], "end": [3.0], "text": ["zzz qqq"]},  # no known words
        "truncated": {"start": [0.0], "end": [5.0], "text": ["paint the wall"]},
    }
    (d / "captions.json").write_text(json.dumps(captions))
    return {"manifest": str(d / "howto.csv"), "captions": str(d / "captions.json"), "video_root": str(v),
            "dir": str(d)}


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """Planted synthetic stores: train / eval share the word->feature mixing; classes has 4 clip classes."""
    from synthetic import planted_store

    rng = np.random.default_rng(0)
    words = rng.normal(size=(48, 300))
    mixers = rng.normal(size=(300, 64)) / 10, rng.normal(size=(300, 1024)) / 10
    d = tmp_path_factory.mktemp("stores")
    return {"train": planted_store(d / "train.zarr", 48, 1, words, mixers),
            "eval": planted_store(d / "eval.zarr", 12, 2, words, mixers),
            "classes": planted_store(d / "classes.zarr", 48, 3, words, mixers, classes=4)}


@pytest.fixture(scope="session")
def framed(tmp_path_factory):
    """Planted 4-class stores (train 32 videos, eval 12) with a frames group: each second's JPEG shows the
    video's class (a colour and a bar; features/jpeg.py's encoder), its captions name the class's words."""
    from synthetic import add_frames, planted_store

    rng = np.random.default_rng(0)
    words = rng.normal(size=(48, 300))
    mixers = rng.normal(size=(300, 64)) / 10, rng.normal(size=(300, 1024)) / 10
    d = tmp_path_factory.mktemp("framed")
    out = []
    for name, n, seed in (("train", 32, 5), ("eval", 12, 6)):
        store = planted_store(d / f"{name}.zarr", n, seed, words, mixers, classes=4)
        add_frames(store, [[v % 4] * 8 for v in range(n)], seed=seed)  # 4 clips of 2 s: 8 frames per video
        out.append(store)
    return out
