"""Does a model learn from real audio? Narrated videos of real speech, through the whole product.

Videos are built from ../shared/data/fsdd (real recordings of spoken digits): each 2 s clip's audio says a
digit, its caption names the digit half of the time (else filler words), its frames carry nothing. Training
videos use recordings 0-39 of each speaker and digit, held-out videos recordings 40-49. They are encoded with
PyAV, extracted with `pipeline extract` (log-mel, a word2vec .bin of random GoogleNews-norm vectors for the
caption words, random-init ResNet-152),
then MCN trains end-to-end audio (DAVEnet on the cached log-mel) with its full loss, with MCN's own settings
(--recon-targets mcn --audio-padding mcn) and with MMS alone, and `trainers eval` embeds the held-out clips.
Reported per run: k-means NMI of the held-out audio embeddings against the spoken digit, and class-level
audio->text R@1 (a hit when the top-ranked caption belongs to a clip of the same digit), beside k-means on raw
log-mel (mean and std per clip) and chance.
Usage: python benchmarks/learn_speech.py [--train-videos 300 --test-videos 100 --steps 200]
"""
import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import DIGITS, recordings, speech_videos  # noqa: E402

from pipeline.demo import write_video  # noqa: E402
from pipeline.extract import ExtractConfig, extract  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from trainers.evaluate import evaluate  # noqa: E402
from trainers.mcn import MCNConfig, train  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
RUNS = {"MCN full loss (defaults)": {},
        "MCN full loss, MCN's settings": dict(recon_targets="mcn", audio_padding="mcn"),
        "MCN, MMS only": dict(no_cluster=True, no_recon=True)}


def build(folder: Path, recs, n: int, seed: int, held_out: bool) -> dict:
    """Videos, and a HowTo100M manifest + captions (training) or a clip-per-row CSV with the digit (held out)."""
    (folder / "videos").mkdir(parents=True)
    rows, captions, sentences = [], {}, []
    for k, (wave, clip_rows, words) in enumerate(speech_videos(recs, n, seed=seed, lead=0.1)):
        vid = f"{'test' if held_out else 'train'}_{k:04d}"
        write_video(folder / "videos" / f"{vid}.mp4", len(wave) / 16000, tuple(np.random.default_rng(k).integers(0, 255, 3)),
                    size=(64, 48), fps=1, seed=k, wave=wave)
        rows += [[vid, *r[1:]] for r in clip_rows]
        captions[vid] = {"start": [r[1] for r in clip_rows], "end": [r[2] for r in clip_rows],
                         "text": [r[3] for r in clip_rows]}
        sentences += words
    if held_out:
        with open(folder / "clips.csv", "w", newline="") as f:
            csv.writer(f).writerows([["video_id", "start", "end", "text", "digit"], *rows])
        return {"manifest": str(folder / "clips.csv"), "captions": None, "sentences": sentences}
    with open(folder / "howto100m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id"], *[[v] for v in captions]])
    (folder / "captions.json").write_text(json.dumps(captions))
    return {"manifest": str(folder / "howto100m.csv"), "captions": str(folder / "captions.json"),
            "sentences": sentences}


def nmi_of(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(y, KMeans(10, n_init=10, random_state=0).fit_predict(x)))


def scores(run: Path, store: str) -> dict:
    """Audio-embedding NMI vs the digit and class-level audio->text R@1, from `trainers eval`'s embeddings."""
    import zarr

    evaluate(run, store)
    g = zarr.open_group(str(run / "embeddings.zarr"), mode="r")
    s = FeatureStore(store)
    keys = list(g["key"][:])
    index = {k: i for i, k in enumerate(s.clip_keys(np.arange(s.n_clips)))}
    digit = s.labels(np.array([index[k] for k in keys]))["digit"]
    spaces = [n[:-2] for n in g.array_keys() if n.endswith("_a") and f"{n[:-2]}_t" in g]
    unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)  # noqa: E731
    audio = np.concatenate([unit(g[f"{n[:-2]}_a"][:]) for n in g.array_keys() if n.endswith("_a")], axis=1)
    sim = sum(g[f"{sp}_a"][:] @ g[f"{sp}_t"][:].T for sp in spaces)
    top = sim.argmax(1)
    return {"NMI": nmi_of(audio, digit), "R@1": float((digit[top] == digit).mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=300)
    ap.add_argument("--test-videos", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    t0 = time.time()
    d = Path(tempfile.mkdtemp(prefix="bench-speech-"))
    train_set = build(d / "train", recordings(FSDD, range(0, 40)), args.train_videos, 0, False)
    test_set = build(d / "test", recordings(FSDD, range(40, 50)), args.test_videos, 1, True)
    from gensim.models import KeyedVectors

    # a .bin in GoogleNews' format with random vectors of GoogleNews' norm (~2.5): words that are told apart
    # (a word2vec trained on these few captions gives vectors of norm 0.03, nearly nothing)
    words = sorted({w for s in train_set["sentences"] for w in s})
    kv = KeyedVectors(300)
    kv.add_vectors(words, np.random.default_rng(3).normal(size=(len(words), 300)).astype(np.float32) * 2.5 / 300 ** 0.5)
    kv.save_word2vec_format(str(d / "w2v.bin"), binary=True)
    for name, s in (("train", train_set), ("test", test_set)):
        extract(ExtractConfig(manifest=s["manifest"], captions=s["captions"], store=str(d / f"{name}.zarr"),
                              video_root=str(d / name / "videos"), groups=["resnet152", "logmel", "word2vec"],
                              random_init=["resnet152"], word2vec=str(d / "w2v.bin"), short_side=32, progress=False))
    built = time.time() - t0
    test = FeatureStore(d / "test.zarr")
    digit = test.labels(np.arange(test.n_clips))["digit"]
    mel = test.load_group("logmel")
    raw = []
    for c in range(test.n_clips):
        v, s0, s1 = test.clip_video([c])[0], test.clip_rows("start", c, c + 1)[0], test.clip_rows("end", c, c + 1)[0]
        x = mel.video(v)[int(s0 * 100):int(s1 * 100)].astype(np.float32)
        raw.append(np.concatenate([x.mean(0), x.std(0)]))
    raw = np.array(raw)
    table = {"k-means on raw log-mel (mean, std)": {"NMI": nmi_of((raw - raw.mean(0)) / raw.std(0), digit)},
             "chance": {"NMI": 0.0, "R@1": 0.1}}
    timings = {}
    for name, flags in RUNS.items():
        t = time.time()
        out = d / "runs" / name.replace(" ", "_").replace(",", "").replace("'", "")
        train(MCNConfig(store=str(d / "train.zarr"), out=str(out), combo="va+all", dim=256, videos_per_batch=16,
                        clips_per_video=3, steps=args.steps, lr=5e-4, warmup=20, min_time=0.0, clusters=10,
                        cluster_every=10, queue_steps=4, end_to_end_audio=True, audio_frames=256,
                        checkpoint_every=10**6, **flags), progress=False)
        table[name] = scores(out, str(d / "test.zarr"))
        timings[name] = time.time() - t
    print(f"real speech (FSDD): {args.train_videos} training videos, {args.test_videos} held-out "
          f"({test.n_clips} clips), MCN va+all dim 256, 16x3 clips, {args.steps} steps, end-to-end audio, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':38s} {'audio NMI':>10s} {'a->t R@1':>9s} {'minutes':>8s}")
    for name, r in table.items():
        r1 = f"{100 * r['R@1']:8.1f}%" if "R@1" in r else f"{'':9s}"
        print(f"{name:38s} {r['NMI']:10.3f} {r1} {timings.get(name, 0) / 60:8.1f}")
    base = table["k-means on raw log-mel (mean, std)"]["NMI"]
    full = table["MCN full loss (defaults)"]["NMI"]
    print(f"MCN full loss / raw log-mel NMI: {full / base:.2f}x; built and extracted in {built / 60:.1f} min; "
          f"total {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
