"""A small narrated synthetic dataset, generated on the spot with PyAV (no download).

Each video belongs to one of four "tasks". The task decides the picture (background colour and the
path of a moving square), the sound (a tone) and half of the words of every caption, so the three
modalities share structure that a multimodal model can learn and an evaluation can find.
"""
from __future__ import annotations

import csv
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TASKS = [
    ("bake_bread", (200, 140, 60), 330.0, ["knead", "dough", "flour", "oven", "bread", "yeast"]),
    ("fix_bike", (60, 90, 200), 660.0, ["wheel", "tire", "chain", "bolt", "bike", "pump"]),
    ("plant_tree", (50, 170, 70), 1320.0, ["soil", "dig", "roots", "water", "tree", "shovel"]),
    ("paint_wall", (190, 60, 170), 2640.0, ["brush", "paint", "wall", "roller", "coat", "tape"]),
]
FILLER = ["now", "we", "just", "then", "so", "you", "really", "okay", "next", "good", "this", "take"]
SR = 16000


def write_video(path: str | os.PathLike, seconds: float, color=(128, 128, 128), tone: float | None = 440.0,
                size=(160, 120), fps: int = 10, seed: int = 0, codec: str = "libx264", gop: int | None = None,
                wave: np.ndarray | None = None, images: np.ndarray | None = None) -> None:
    """An H.264 (or other codec) mp4 with an optional AAC mono tone (or ``wave``, 16 kHz mono float32, e.g. real
    speech); deterministic for a seed. ``gop``: frames between keyframes (the encoder's default otherwise;
    libx264's is 250, with B-frames). ``images``: the frames themselves, (seconds * fps, h, w, 3) uint8,
    instead of a moving square in noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if gop:
            vs.codec_context.gop_size = gop
        a_s = None
        if tone is not None or wave is not None:
            a_s = out.add_stream("aac", rate=SR)
            a_s.layout = "mono"
        base = np.array(color, dtype=np.float32)
        for i in range(int(seconds * fps)):
            if images is not None:
                img = images[i]
            else:
                img = base + rng.normal(0, 12, (h, w, 3))
                t = i / fps
                x = int((w - 24) * (0.5 + 0.5 * np.sin(t * (1 + color[0] / 100)))), int((h - 24) * ((t / seconds) % 1))
                img[x[1]:x[1] + 24, x[0]:x[0] + 24] = 255
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if a_s is not None:
            n = int(seconds * SR)
            tt = np.arange(n) / SR
            if wave is None:
                wave = 0.3 * np.sin(2 * np.pi * tone * tt) + 0.05 * rng.normal(size=n)
            for k in range(0, n, 1024):
                chunk = wave[k:k + 1024].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = SR, k, Fraction(1, SR)
                for packet in a_s.encode(frame):
                    out.mux(packet)
            for packet in a_s.encode():
                out.mux(packet)


def loop_video(src: str | os.PathLike, dst: str | os.PathLike, times: int) -> None:
    """A long video from a real one without re-encoding: its packets remuxed ``times`` over, timestamps shifted
    (each copy starts with the source's own IDR frame, so the result decodes as the encoder's stream would)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = [s for s in (inp.streams.video[:1] + inp.streams.audio[:1])]
        outs = {s.index: out.add_stream_from_template(s) for s in streams}
        for k in range(times):
            inp.seek(0)
            for packet in inp.demux(*streams):
                if packet.dts is None:
                    continue
                s = packet.stream
                shift = k * int(s.duration or round(inp.duration / av.time_base / s.time_base))
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                packet.stream = outs[s.index]
                out.mux(packet)


def _caption(rng, words: list[str]) -> str:
    picked = list(rng.choice(words, 2, replace=False)) + list(rng.choice(FILLER, 3, replace=False))
    rng.shuffle(picked)
    return " ".join(picked)


def make_demo(out: str | os.PathLike, n_train: int = 16, n_eval: int = 8, seconds: float = 6.0,
              caption_every: float = 2.0, seed: int = 0) -> dict[str, str]:
    """Write videos, a HowTo100M-style manifest + captions (train), a clip CSV (eval), word2vec .bin."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_rows, captions, eval_rows, sentences = [], {}, [], []
    for i in range(n_train + n_eval):
        t = i % len(TASKS)
        name, color, tone, words = TASKS[t]
        vid = f"{'train' if i < n_train else 'eval'}_{i:03d}"
        jitter = rng.integers(-20, 21, 3)
        write_video(out / "videos" / f"{vid}.mp4", seconds, tuple(int(c) for c in np.clip(np.add(color, jitter), 0, 255)),
                    tone * float(rng.uniform(0.97, 1.03)), seed=seed * 1000 + i)
        starts = np.arange(0, seconds, caption_every)
        texts = [_caption(rng, words) for _ in starts]
        sentences += [s.split() for s in texts]
        if i < n_train:
            train_rows.append([vid, "demo", name, i, t])
            captions[vid] = {"start": [float(s) for s in starts],
                             "end": [float(min(seconds, s + caption_every)) for s in starts], "text": texts}
        else:
            for s, text in zip(starts[::2], texts[::2]):
                eval_rows.append([vid, float(s), float(min(seconds, s + 2 * caption_every)), text, name])
    paths = {"manifest": str(out / "howto100m.csv"), "captions": str(out / "captions.json"),
             "eval_manifest": str(out / "eval.csv"), "word2vec": str(out / "word2vec.bin"),
             "video_root": str(out / "videos"), "class_names": str(out / "class_names.csv")}
    with open(paths["class_names"], "w", newline="") as f:  # each task named by its words (`trainers probe --zero-shot`)
        csv.writer(f).writerows([["label", "text"], *[[name, " ".join(words)] for name, _, _, words in TASKS]])
    with open(paths["manifest"], "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "category_1", "category_2", "rank", "task_id"], *train_rows])
    Path(paths["captions"]).write_text(json.dumps(captions))
    with open(paths["eval_manifest"], "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start", "end", "text", "task"], *eval_rows])
    from gensim.models import KeyedVectors

    # GoogleNews vectors cannot be downloaded here, and a word2vec trained on these few captions is nearly
    # untrained (norm ~0.03): a .bin in GoogleNews' format of random vectors of GoogleNews' norm (~2.5), words
    # told apart, no meaning
    words = sorted({w for s in sentences for w in s})
    kv = KeyedVectors(300)
    kv.add_vectors(words, np.random.default_rng(seed + 1).normal(size=(len(words), 300)).astype(np.float32)
                   * 2.5 / 300 ** 0.5)
    kv.save_word2vec_format(paths["word2vec"], binary=True)
    return paths


DEMO_GROUPS = ["resnet152", "frames", "logmel", "davenet", "word2vec"]


def build_demo(out: str | os.PathLike, n_train: int = 32, n_eval: int = 16, short_side: int = 112,
               workers: int | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """make_demo, then `pipeline extract` of both sets (the training manifest and the held-out clips) into
    ``out``/features.zarr and ``out``/eval.zarr: random-init ResNet-152 and DAVEnet (no pretrained weights
    here; the store records it), the log-mel, the frames as JPEG (short side 48) and the word2vec ids."""
    from .extract import ExtractConfig, extract

    out = Path(out)
    paths = make_demo(out, n_train=n_train, n_eval=n_eval)
    common = dict(word2vec=paths["word2vec"], video_root=paths["video_root"], workers=workers,
                  short_side=short_side, groups=DEMO_GROUPS, random_init=["resnet152", "davenet"],
                  jpeg_short_side=48, progress=progress)
    summaries = [extract(ExtractConfig(manifest=manifest, captions=captions, store=str(store), **common))
                 for manifest, captions, store in ((paths["manifest"], paths["captions"], out / "features.zarr"),
                                                   (paths["eval_manifest"], None, out / "eval.zarr"))]
    return paths, summaries
