import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import zarr

from trainers.data import load_clips, merge_captions
from trainers.evaluate import evaluate
from trainers.mcn import MCNConfig, train

@pytest.fixture(scope="module")
def planted(stores):
    return stores["train"], stores["eval"]


def small(store, out, **kw):
    base = dict(store=str(store), out=str(out), combo="va+all", dim=64, videos_per_batch=8, clips_per_video=4,
                steps=200, warmup=20, lr=1e-3, min_time=0.0, clusters=4, cluster_every=10, queue_steps=2,
                checkpoint_every=50, seed=3)
    return MCNConfig(**{**base, **kw})


def test_merge_captions_follows_mcn():
    starts, ends = [0.0, 2.0, 3.0, 9.0], [1.0, 2.5, 8.0, 12.0]
    assert merge_captions(starts, ends, 1, 0.0) == (1, 1, [1])
    # from caption 1: prev gives 2.5-0=2.5, next gives 8-2=6 -> prev; then only next remains
    assert merge_captions(starts, ends, 1, 5.0) == (0, 2, [1, 0, 2])
    assert merge_captions(starts, ends, 3, 100.0) == (0, 3, [3, 2, 1, 0])  # stops when nothing is left


def test_loader_pools_like_mcn(planted):
    data = load_clips(planted[0], "vat", min_time=0.0)
    assert data.video.shape == (192, 64) and data.audio.shape == (192, 1024)
    torch.testing.assert_close(data.video.norm(dim=1), torch.ones(192))
    assert data.words.shape == (192, 20) and (data.words[:, 3:] == len(data.vectors) - 1).all()
    assert (data.vectors[-1] == 0).all()


def test_mcn_learns_planted_structure(planted, tmp_path):
    train(small(planted[0], tmp_path / "run"), progress=False)
    r = evaluate(tmp_path / "run", str(planted[1]), label="task")
    chance = 1 / r["text_to_video"]["N"]
    assert r["text_to_video"]["R@1"] > 10 * chance, r["text_to_video"]
    assert r["audio_to_video"]["R@1"] > 10 * chance, r["audio_to_video"]
    assert set(r["clustering"]) == {"task/va", "task/all"}
    emb = zarr.open_group(str(tmp_path / "run" / "embeddings.zarr"), mode="r")
    assert emb["all_t"].shape == (48, 64) and emb["va_a"].shape == (48, 64)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mms"] < rows[0]["mms"]


def test_ablation_switches_remove_their_losses(planted, tmp_path):
    train(small(planted[0], tmp_path / "r", steps=3, no_cluster=True, no_recon=True, combo="vt"), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cluster"] == 0 and r["recon"] == 0 and r["mms"] > 0 for r in rows)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small(planted[0], tmp_path / "r", steps=3), progress=False)


def test_killed_training_resumes_to_the_same_model(planted, tmp_path):
    args = [sys.executable, "-m", "trainers.cli", "mcn", "--store", str(planted[0]), "--combo", "all", "--dim", "64",
            "--videos-per-batch", "8", "--clips-per-video", "4", "--steps", "80", "--warmup", "5", "--lr", "1e-3",
            "--min-time", "0", "--clusters", "4", "--cluster-every", "7", "--queue-steps", "2",
            "--checkpoint-every", "5", "--no-progress", "--out"]
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
