"""Does a model learn from real audio? Narrated videos of real speech, through the whole product.

Videos are built from ../shared/data/fsdd (real recordings of spoken digits): each clip (--clip-seconds) of
audio says a digit, its caption names the digit half of the time (else filler words), its 1 fps frames show
the digit drawn. Training videos use recordings 0-39 of each speaker and digit, held-out videos recordings
40-49. They are encoded with PyAV and extracted with `pipeline extract` (log-mel, a word2vec .bin of random
GoogleNews-norm vectors for the caption words, random-init ResNet-152: its features of the drawn digits still
tell them apart a little; the frames as JPEG). Every method then trains end-to-end audio (DAVEnet on the cached
log-mel): MCN with its full loss in both recipes (ours, and `--recipe paper`: one `all` space, raw-dot
clustering, MCN's reconstruction targets) and with MMS alone, and MCN on frozen pooled log-mel (the regime of the
default: frozen audio features) in both recipes; MMV, XDC and SeLaVi (ours, `--recipe paper` and a tuned row;
XDC and SeLaVi also train their video encoder, as their papers do: a resnet18 on the cached 48-pixel JPEG
frames); `trainers eval` embeds the held-out clips. Both recipes run at the benchmark's scale (sizes, length,
learning rate and warm-up: the papers' are for millions of clips); MMV's and XDC's recipes equal our defaults
there, so they have one row each.
Reported per run: k-means NMI of the held-out audio embeddings against the spoken digit, and, where the model
has an audio-text space, class-level audio->text R@1 (a hit when the top-ranked caption belongs to a clip of
the same digit), beside k-means on raw log-mel (mean and std per clip) and chance; the NMI of the same audio
clusters against the speaker (what an audio embedding may cluster by instead of the digit: nothing but the
audio tells speakers apart); and the NMI of the video embeddings (heads on frozen random-init ResNet-152
features of the drawn digits; XDC's and SeLaVi's: their resnet18's). Each row is printed as its run ends.
End-to-end video and text learn in tests/test_mcn.py and in `trainers demo`.
SeLaVi trains 3x the updates of the others by default (--selavi-steps): its labels are its own predictions,
they settle only after 100 to 250 updates, and its audio learns them after that (README).
Usage: python benchmarks/learn_speech.py [--train-videos 300 --test-videos 100 --steps 200 --selavi-steps 600
    --batch 24 --clip-seconds 1 --seed 1 --only mcn,xdc --data DIR]
"""
import argparse
import atexit
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import DIGITS, digit_frames, raw_logmel_nmi, recordings, speech_videos  # noqa: E402

from pipeline.demo import write_video  # noqa: E402
from pipeline.extract import ExtractConfig, extract  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from trainers.evaluate import evaluate  # noqa: E402
from trainers.methods import methods  # noqa: E402
from trainers.train import train  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
E2E = dict(end_to_end_audio=True, checkpoint_every=10**6)
# the benchmark's scale, set in both recipes: sizes, length, learning rate and warm-up (the papers' are for
# millions of clips); what makes each method itself (losses, temperatures, targets, marginals) is the recipe's
MCN = dict(combo="va+all", dim=256, clips_per_video=3, lr=5e-4, warmup=20, min_time=0.0,
           clusters=10, cluster_every=10, queue_steps=4)
MCN_SCALE = {k: v for k, v in MCN.items() if k != "combo"}
FROZEN = dict(end_to_end_audio=False, audio_group="logmel", normalize_audio=True)  # pooled log-mel, L2-normalised
# XDC and SeLaVi train their video encoder too (as their papers do): resnet18 on the cached 48-pixel frames,
# one per 1 s clip
E2E_VIDEO = dict(end_to_end_video="resnet18", video_frames=1, frame_size=48, crop_size=40, augment="crop")
SELAVI = dict(clusters=10, lr=0.1, dim=128, label_updates=10, **E2E_VIDEO)
# name: (trainer, recipe, its flags; the length and batch come from --steps and --batch: at 24, MCN's 8 x 3 clips)
RUNS = {"MCN full loss (ours)": ("mcn", "ours", MCN),
        "MCN --recipe paper": ("mcn", "paper", MCN_SCALE),
        "MCN, MMS only": ("mcn", "ours", {**MCN, "no_cluster": True, "no_recon": True}),
        "MCN frozen log-mel (ours)": ("mcn", "ours", {**MCN, **FROZEN}),
        "MCN frozen log-mel --recipe paper": ("mcn", "paper", {**MCN_SCALE, **FROZEN}),
        "MMV (FAC), NCE + MIL-NCE": ("mmv", "ours", dict(lr=2e-3, warmup=20, candidates=1, dim_va=128, dim_vat=64,
                                                          text_dim=256)),
        "XDC": ("xdc", "ours", dict(clusters=10, lr=0.05, dim=128, pca=32, epochs=1, **E2E_VIDEO)),
        "SeLaVi (ours, 3 heads)": ("selavi", "ours", {**SELAVI, "heads": 3}),
        "SeLaVi --recipe paper": ("selavi", "paper", SELAVI),
        "SeLaVi (tuned: gauss, bn-warmup, 20 dB gain)": ("selavi", "ours", {
            **SELAVI, "heads": 3, "audio_gain_db": 20.0, "distribution": "gauss", "bn_warmup": 20})}
GROUPS = ["resnet152", "logmel", "word2vec", "frames"]  # frames: 48-pixel JPEGs, for end-to-end video


def length(method: str, steps: int, clips: int, batch: int) -> dict:
    """``steps`` updates of ``batch`` clips, in each trainer's own unit (XDC: iterations of one epoch; SeLaVi:
    epochs), and the batch in its own unit (MCN: videos of 3 clips)."""
    per_epoch = max(1, clips // batch)
    if method == "xdc":
        return {"iterations": max(1, round(steps / per_epoch)), "batch_size": batch}
    if method == "selavi":
        return {"epochs": max(1, round(steps / per_epoch)), "batch_size": batch}
    if method == "mmv":
        return {"steps": steps, "batch_size": batch}
    return {"steps": steps, "videos_per_batch": batch // 3}


def build(folder: Path, recs, n: int, seed: int, held_out: bool, clip_s: float) -> dict:
    """Videos, and a HowTo100M manifest + captions (training) or a clip-per-row CSV with the digit (held out)."""
    (folder / "videos").mkdir(parents=True)
    rows, captions, sentences = [], {}, []
    for k, (wave, clip_rows, words) in enumerate(speech_videos(recs, n, seed=seed, lead=0.1, clip_s=clip_s)):
        vid = f"{'test' if held_out else 'train'}_{k:04d}"
        per_second = np.repeat([DIGITS.index(r[4]) for r in clip_rows], round(clip_s))  # 1 fps
        write_video(folder / "videos" / f"{vid}.mp4", len(wave) / 16000, size=(64, 48), fps=1, wave=wave,
                    images=digit_frames(per_second, (64, 48), seed=k))
        rows += [[vid, *r[1:]] for r in clip_rows]
        captions[vid] = {"start": [r[1] for r in clip_rows], "end": [r[2] for r in clip_rows],
                         "text": [r[3] for r in clip_rows]}
        sentences += words
    if held_out:
        with open(folder / "clips.csv", "w", newline="") as f:
            csv.writer(f).writerows([["video_id", "start", "end", "text", "digit", "speaker"], *rows])
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
    labels = s.labels(np.array([index[k] for k in keys]))
    digit = labels["digit"]
    spaces = [n[:-2] for n in g.array_keys() if n.endswith("_a") and f"{n[:-2]}_t" in g]
    unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)  # noqa: E731
    audio = np.concatenate([unit(g[f"{n[:-2]}_a"][:]) for n in g.array_keys() if n.endswith("_a")], axis=1)
    video = np.concatenate([unit(g[n][:]) for n in g.array_keys() if n.endswith("_v")], axis=1)
    out = {"NMI": nmi_of(audio, digit), "speaker NMI": nmi_of(audio, labels["speaker"]),
           "video NMI": nmi_of(video, digit)}
    if spaces:  # MMV's audio meets text only through video, XDC and SeLaVi align no spaces: no a->t to score
        top = sum(g[f"{sp}_a"][:] @ g[f"{sp}_t"][:].T for sp in spaces).argmax(1)
        out["R@1"] = float((digit[top] == digit).mean())
    return out


def prepare(d: Path, n_train: int, n_test: int, clip_s: float):
    """Training and held-out videos, a word2vec .bin, and both extracted stores, in ``d``."""
    shutil.rmtree(d, ignore_errors=True)
    train_set = build(d / "train", recordings(FSDD, range(0, 40)), n_train, 0, False, clip_s)
    test_set = build(d / "test", recordings(FSDD, range(40, 50)), n_test, 1, True, clip_s)
    from gensim.models import KeyedVectors

    # a .bin in GoogleNews' format with random vectors of GoogleNews' norm (~2.5): words that are told apart
    # (a word2vec trained on these few captions gives vectors of norm 0.03, nearly nothing)
    words = sorted({w for s in train_set["sentences"] for w in s})
    kv = KeyedVectors(300)
    kv.add_vectors(words, np.random.default_rng(3).normal(size=(len(words), 300)).astype(np.float32) * 2.5 / 300 ** 0.5)
    kv.save_word2vec_format(str(d / "w2v.bin"), binary=True)
    for name, s in (("train", train_set), ("test", test_set)):
        extract(ExtractConfig(manifest=s["manifest"], captions=s["captions"], store=str(d / f"{name}.zarr"),
                              video_root=str(d / name / "videos"), groups=GROUPS, random_init=["resnet152"],
                              word2vec=str(d / "w2v.bin"), short_side=32, jpeg_short_side=48, progress=False))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=300)
    ap.add_argument("--test-videos", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--selavi-steps", type=int, help="SeLaVi's updates (default: 3x --steps; at 200 its audio "
                    "stays at raw log-mel: its labels settle late, and its audio learns them after)")
    ap.add_argument("--batch", type=int, default=24, help="clips per update (MCN: a third as many videos of 3 "
                    "clips); 24 fits the benchmark in 15 min on 2 CPU cores with --selavi-steps 200, 48 learns "
                    "more (README)")
    ap.add_argument("--clip-seconds", type=float, default=1.0, help="length of each clip; the end-to-end audio "
                    "window is 100 log-mel frames per second of it (1 s holds 99%% of FSDD's recordings whole, "
                    "after the 0.1 s lead; 2 s costs DAVEnet 1.6x the time per update)")
    ap.add_argument("--seed", type=int, default=1, help="every run's training seed (initialisation, batches, "
                    "augmentation); the videos are the same for every seed")
    ap.add_argument("--only", help="comma-separated parts of run names to train (default: every run)")
    ap.add_argument("--data", help="folder for the videos and stores, reused when it holds them built with the "
                    "same sizes (default: a new temporary folder)")
    args = ap.parse_args()
    args.selavi_steps = args.selavi_steps or 3 * args.steps
    if args.batch % 3:
        ap.error(f"--batch {args.batch}: MCN's batches are videos of 3 clips; give a multiple of 3")
    t0 = time.time()
    d = Path(args.data or tempfile.mkdtemp(prefix="bench-speech-"))
    if not args.data:  # ~1 GB of videos, stores and checkpoints per run
        atexit.register(shutil.rmtree, d, ignore_errors=True)
    if args.data and d.is_dir() and any(d.iterdir()) and not (d / "built.json").is_file():
        sys.exit(f"--data {d}: holds files this benchmark did not build (no built.json), and a rebuild empties "
                 "the folder; give a new or empty folder, or one an earlier --data run built")
    sizes = {**{k: getattr(args, k) for k in ("train_videos", "test_videos", "clip_seconds")}, "groups": GROUPS}
    if not (d / "built.json").is_file() or json.loads((d / "built.json").read_text()) != sizes:
        prepare(d, args.train_videos, args.test_videos, args.clip_seconds)
        (d / "built.json").write_text(json.dumps(sizes))
    built = time.time() - t0
    test = FeatureStore(d / "test.zarr")
    table = {"k-means on raw log-mel (mean, std)": {"NMI": raw_logmel_nmi(d / "test.zarr")},
             "chance": {"NMI": 0.0, "R@1": 0.1}}
    timings = {}
    n_train = FeatureStore(d / "train.zarr").n_clips
    for name, (method, recipe, flags) in RUNS.items():
        if args.only and not any(k.lower() in name.lower() for k in args.only.split(",")):
            continue
        t = time.time()
        out = d / "runs" / name.replace(" ", "_").replace(",", "").replace("'", "")
        shutil.rmtree(out, ignore_errors=True)
        cls = methods()[method]
        e2e = {**E2E, "audio_frames": round(100 * args.clip_seconds)}
        e2e = {k: v for k, v in e2e.items() if k in cls.Config.__dataclass_fields__}
        size = length(method, args.selavi_steps if method == "selavi" else args.steps, n_train, args.batch)
        train(cls.configure(recipe, store=str(d / "train.zarr"), out=str(out), seed=args.seed,
                            **{**e2e, **flags, **size}), progress=False)
        table[name] = scores(out, str(d / "test.zarr"))
        timings[name] = time.time() - t
        print(f"{name}: {table[name]} in {timings[name] / 60:.1f} min", flush=True)
    print(f"real speech (FSDD): {args.train_videos} training videos, {args.test_videos} held-out "
          f"({test.n_clips} clips of {args.clip_seconds:g} s), end-to-end audio, {args.steps} updates of "
          f"{args.batch} clips (SeLaVi {args.selavi_steps}; MCN va+all dim 256, {args.batch // 3}x3), "
          f"seed {args.seed}, {torch.get_num_threads()} threads")
    print(f"{'':38s} {'audio NMI':>10s} {'a->t R@1':>9s} {'speaker NMI':>12s} {'video NMI':>10s} {'minutes':>8s}")
    for name, r in table.items():
        r1 = f"{100 * r['R@1']:8.1f}%" if "R@1" in r else f"{'':9s}"
        cells = [f"{r[k]:{w}.3f}" if k in r else " " * w for k, w in (("speaker NMI", 12), ("video NMI", 10))]
        print(f"{name:38s} {r['NMI']:10.3f} {r1} {' '.join(cells)} {timings.get(name, 0) / 60:8.1f}")
    base = table["k-means on raw log-mel (mean, std)"]["NMI"]
    full = table.get("MCN full loss (ours)", {"NMI": float("nan")})["NMI"]
    print(f"MCN full loss / raw log-mel NMI: {full / base:.2f}x; built and extracted in {built / 60:.1f} min; "
          f"total {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
