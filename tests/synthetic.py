"""Synthetic inputs and stores, written with the store's own writer API (plan_store from a manifest,
write_part per unit, write_text for the word ids): stores with planted cross-modal structure for the
tests, and HowTo100M-shaped inputs and stores of any size for the benchmarks (random features: only
sizes and layout matter there)."""
import csv
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.plan import plan_store
from pipeline.store import CLIP_CHUNK, FeatureStore, add_groups, write_part, write_status_index, write_text

CLIP_S = 2.0


def quiet_plan(path, manifest, captions, part_size):
    """plan_store without a warning per video: no video files exist, so each would be reported 'missing'."""
    log = logging.getLogger("mmcache")
    level, log.level = log.level, logging.ERROR
    try:
        plan_store(path, str(manifest), captions and str(captions), part_size=part_size)
    finally:
        log.setLevel(level)


def planted_store(path, n_videos, seed, word_vectors, mixers, clips_per_video=4, vocab=48, classes=0):
    """A store whose video and audio rows are fixed functions of each clip's caption words (+ noise).

    With ``classes``, each video belongs to a class that owns a slice of the vocabulary, so clips cluster
    by class in every modality; label_task is the class. Without, label_task = first word mod 3.
    """
    rng = np.random.default_rng(seed)
    wv, wa = mixers
    rows, ids, frames, audio = [], [], [], []
    for v in range(n_videos):
        f_rows, a_rows = [], []
        own = np.array_split(np.arange(vocab), classes)[v % classes] if classes else np.arange(vocab)
        for c in range(clips_per_video):
            words = rng.choice(own, 3, replace=False)
            meaning = word_vectors[words].mean(0)
            f_rows.append(meaning @ wv + 0.05 * rng.normal(size=(int(CLIP_S), wv.shape[1])))
            a_rows.append(meaning @ wa + 0.05 * rng.normal(size=(int(CLIP_S * 6.25), 1024)))
            rows.append([f"v{v}", c * CLIP_S, c * CLIP_S + CLIP_S - 0.01, " ".join(f"w{w}" for w in words),
                         f"c{v % classes}" if classes else f"t{words[0] % 3}"])
            ids.append(words.astype(np.int32))
        frames.append(np.concatenate(f_rows))
        audio.append(np.concatenate(a_rows))
    return write_clip_store(path, rows, "task", {"resnet152": frames, "davenet": audio}, clips_per_video * CLIP_S,
                            ids, vocab, word_vectors,
                            {"resnet152": {"dim": wv.shape[1], "rate": 1.0}, "davenet": {"dim": 1024, "rate": 6.25},
                             "word2vec": {"dim": 300}})


def write_clip_store(path, rows, label: str, units: dict, seconds: float, ids, vocab: int, word_vectors,
                     groups: dict) -> Path:
    """A clip-per-row store from its clip rows ([video_id, start, end, text, <label>]) in one part: ``units``
    {group: each video's rows}, every video ``seconds`` long, each clip's word ids (rows of ``word_vectors``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = path.parent / f"{path.name}.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start", "end", "text", label], *rows])
    n = len(next(iter(units.values())))
    quiet_plan(path, manifest, None, n)
    for name, data in units.items():
        write_part(path, 0, name, data, ["ok"] * n, [""] * n, [seconds] * n, data[0].shape[1])
    write_text(FeatureStore(path), [(["ok"] * len(ids), ids)], vocab, lambda used: word_vectors[used])
    add_groups(path, groups)
    return path


# ---- HowTo100M-shaped inputs and stores (benchmarks/scale.py, planning tests) ----------------------

DIMS = {"resnet152": 2048, "davenet": 1024}
RATES = {"resnet152": 1.0, "davenet": 6.25}
VOCAB = 5000


def write_inputs(folder: Path, n_videos: int, captions_per_video: int = 110, seconds: float = 12.0,
                 seed: int = 0) -> tuple[Path, Path]:
    """howto100m.csv and caption.json in HowTo100M's layout, written a video at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest, captions = folder / "howto100m.csv", folder / "caption.json"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "category_1", "category_2", "rank", "task_id"])
        w.writerows([f"vid{i:07d}", "Food", f"cat{i % 20}", i % 7, i % 100] for i in range(n_videos))
    with open(captions, "w") as f:
        f.write("{")
        for i in range(n_videos):
            start = np.sort(rng.uniform(0, seconds - 1, captions_per_video)).round(2)
            end = (start + rng.uniform(0.5, 3.0, captions_per_video)).round(2)
            words = rng.integers(0, VOCAB, (captions_per_video, 8))
            text = [" ".join(f"w{x}" for x in row) for row in words]
            f.write(("," if i else "") + json.dumps(f"vid{i:07d}") + ":" +
                    json.dumps({"start": start.tolist(), "end": end.tolist(), "text": text}))
        f.write("}")
    return manifest, captions


def build_store(path: Path, manifest: Path, captions: Path, seconds: float = 12.0, part_size: int = 64,
                seed: int = 0) -> FeatureStore:
    """Plan (unless already planned) and fill a store with resnet152, davenet and word2vec groups."""
    if not (path / "zarr.json").is_file():
        quiet_plan(path, manifest, captions, part_size)
    store = FeatureStore(path)
    rng = np.random.default_rng(seed)
    pool = {g: np.abs(rng.normal(size=(4096, d))).astype(np.float16) for g, d in DIMS.items()}
    for p in range(store.n_parts):
        a, b = store.part_range(p)
        for g, d in DIMS.items():
            n = int(seconds * RATES[g])
            starts = rng.integers(0, len(pool[g]) - n, b - a)
            write_part(path, p, g, [pool[g][s:s + n] for s in starts], ["ok"] * (b - a), [""] * (b - a),
                       [seconds] * (b - a), d)

    def chunks():
        for c in range(0, store.n_clips, CLIP_CHUNK):
            texts = store.clip_values("text", np.arange(c, min(store.n_clips, c + CLIP_CHUNK)))
            ids = [np.array([int(w[1:]) for w in t.split()], np.int32) for t in texts]
            yield np.array(["ok" if len(i) else "empty_caption" for i in ids], dtype=object), ids

    write_text(store, chunks(), VOCAB, lambda rows: rng.normal(size=(len(rows), 300)).astype(np.float32))
    add_groups(path, {g: {"dim": d, "rate": RATES[g]} for g, d in DIMS.items()} | {"word2vec": {"dim": 300}})
    store = FeatureStore(path)
    for g in DIMS:
        write_status_index(store, g)
    return store


# ---- real speech (FSDD): audio that says a digit, captions that name it some of the time ----------------

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEECH_FILLER = ["now", "we", "just", "then", "so", "you", "okay", "next", "good", "this", "take", "look"]


def recordings(folder: Path, indices) -> list[tuple[int, Path]]:
    """(digit, wav) of every FSDD recording whose index (the number after the speaker) is in ``indices``; the
    calling test is skipped, saying so, where ``folder`` (under shared/, beside the checkout) is absent."""
    if not Path(folder).is_dir():
        import pytest

        pytest.skip(f"the FSDD recordings are not here ({folder}: shared/ beside the checkout)")
    out = []
    for p in sorted(Path(folder).glob("*.wav")):
        digit, _, index = p.stem.split("_")
        if int(index) in indices:
            out.append((int(digit), p))
    return out


def read_wav16k(path: Path) -> np.ndarray:
    import wave

    import torch
    import torchaudio

    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        rate = w.getframerate()
    return torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()


def speech_videos(recs: list[tuple[int, Path]], n_videos: int, clips_per_video: int = 3, name_prob: float = 0.5,
                  seed: int = 0, lead: float = 0.0, clip_s: float = CLIP_S):
    """Narrated 'videos' of real speech: per video (16 kHz waveform, clip rows [video_id, start, end, text,
    digit, speaker], caption words). Each clip is ``clip_s`` seconds whose audio is one recording saying a digit (in
    quiet noise; FSDD's recordings last 0.41 s median, 0.82 s at the 99th percentile) and whose caption names
    the digit with probability ``name_prob`` (else filler words only); captions start ``lead`` seconds into
    their clip (MCN gives a clip starting before 12.5 ms an empty audio window)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(recs))
    for v in range(n_videos):
        wave, rows, words_of = [], [], []
        for c in range(clips_per_video):
            digit, wav = recs[order[(v * clips_per_video + c) % len(recs)]]
            x = read_wav16k(wav)[:int((clip_s - lead) * 16000)]
            clip = 0.003 * rng.normal(size=int(clip_s * 16000)).astype(np.float32)
            at = int(lead * 16000) + int(rng.integers(0, len(clip) - int(lead * 16000) - len(x) + 1))
            clip[at:at + len(x)] += x
            wave.append(clip)
            words = list(rng.choice(SPEECH_FILLER, 3, replace=False))
            if rng.random() < name_prob:
                words.insert(int(rng.integers(0, 4)), DIGITS[digit])
            rows.append([f"v{v}", c * clip_s + lead, c * clip_s + clip_s - 0.01, " ".join(words), DIGITS[digit],
                         wav.stem.split("_")[1]])
            words_of.append(words)
        yield np.concatenate(wave), rows, words_of


def digit_frames(digits: list[int], size=(64, 48), seed: int = 0) -> np.ndarray:
    """One frame per entry: the digit drawn in white on a dark grey ground, jittered a few pixels ((n, h, w, 3)
    uint8). Through even a random-init ResNet-152 a linear probe tells these digits apart (~70%)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    w, h = size
    font = ImageFont.load_default(size=int(h * 0.8))
    out = []
    for d in digits:
        im = Image.new("RGB", (w, h), (40, 40, 40))
        ImageDraw.Draw(im).text((w // 2 - h // 5 + int(rng.integers(-4, 5)), int(rng.integers(0, 5))), str(d),
                                fill=(255, 255, 255), font=font)
        out.append(np.asarray(im))
    return np.stack(out)


def speech_store(path: Path, recs: list[tuple[int, Path]], n_videos: int, clips_per_video: int = 3,
                 name_prob: float = 0.5, seed: int = 0, lead: float = 0.0, video_signal: float = 0.0) -> Path:
    """:func:`speech_videos` written straight into a store (no video files): the pipeline's own log-mel
    (features/audio.py) over each whole video, frame rows of noise plus ``video_signal`` times a fixed code
    of the clip's digit (0: frames carry nothing), word ids of the captions; label_digit is the spoken digit."""
    from features.audio import logmel

    rng = np.random.default_rng(seed + 1)
    vocab = DIGITS + SPEECH_FILLER
    codes = np.random.default_rng(7).normal(size=(10, 64))
    rows, ids, mels, frames = [], [], [], []
    for wave, clip_rows, words_of in speech_videos(recs, n_videos, clips_per_video, name_prob, seed, lead):
        rows += [r[:5] for r in clip_rows]
        ids += [np.array([vocab.index(w) for w in words], np.int32) for words in words_of]
        mels.append(logmel(wave))
        digits = np.repeat([DIGITS.index(r[4]) for r in clip_rows], int(CLIP_S))
        frames.append((rng.normal(size=(len(digits), 64)) + video_signal * codes[digits]).astype(np.float32))
    word_vectors = np.random.default_rng(1).normal(size=(len(vocab), 300)).astype(np.float32)
    return write_clip_store(path, rows, "digit", {"logmel": mels, "resnet152": frames}, clips_per_video * CLIP_S,
                            ids, len(vocab), word_vectors, {"resnet152": {"dim": 64, "rate": 1.0},
                                                            "logmel": {"dim": 40, "rate": 100.0}, "word2vec": {"dim": 300}})


# ---- Hugging Face text ---------------------------------------------------------------------------

TINY_WORDS = ["cut", "the", "onion", "knead", "dough", "wheel", "bike", "paint", "wall", "bad", "time", "zzz", "qqq"]


def raw_logmel_nmi(store, label: str = "digit") -> float:
    """The baseline a learnt audio embedding must beat: k-means (k = the label's classes) on each clip's raw
    log-mel mean and std per band, standardised, NMI against the store's label column."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    s = FeatureStore(store)
    clips = np.arange(s.n_clips)
    y = s.labels(clips)[label]
    mel = s.load_group("logmel")
    starts, ends = s.clip_rows("start", 0, s.n_clips), s.clip_rows("end", 0, s.n_clips)
    x = np.array([np.concatenate([m.mean(0), m.std(0)]) for m in
                  (mel.video(v)[int(100 * a):int(100 * b)].astype(np.float32)
                   for v, a, b in zip(s.clip_video(clips), starts, ends))])
    pred = KMeans(len(np.unique(y)), n_init=10, random_state=0).fit_predict((x - x.mean(0)) / x.std(0))
    return float(normalized_mutual_info_score(y, pred))


def tiny_text_model(folder: Path, words=TINY_WORDS):
    """A BERT-shaped text model and its tokenizer over ``words``, saved as a local Hugging Face folder (never
    downloaded)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary itself (a vocab_file= keyword is silently ignored: every word [UNK])
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok.tokenize(" ".join(words[:2])) == list(words[:2])
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    model.save_pretrained(folder)
    return model


def add_hf_text(store: Path, folder: Path) -> dict:
    """The hf_text group of ``store``'s captions, as `pipeline extract` writes it (features/hf.py's extractor)."""
    from features.base import Options
    from features.hf import HFText
    from pipeline.store import write_clip_text

    s = FeatureStore(store)
    ext = HFText("hf_text", Options(weights=(("hf_text", str(folder)),)))
    texts = s.clip_values("text", np.arange(s.n_clips))
    emb, ids = ext(texts)
    status = np.array(["ok" if str(t).strip() else "empty_caption" for t in texts], dtype=object)
    counts = write_clip_text(s, "hf_text", [(status, emb, ids)], ext.dim)
    add_groups(store, {"hf_text": ext.provenance()})
    return counts


# ---- cached frames -------------------------------------------------------------------------------

def class_frame(label: int, rng, size: int = 32) -> np.ndarray:
    """A size x size frame of class ``label``: its colour and a bar at a class-specific place, plus noise."""
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40], [200, 60, 210]], np.float32)
    img = np.full((size, size, 3), 90.0) + rng.normal(0, 20, (size, size, 3))
    third = size // 3
    img[(label % 3) * third:(label % 3 + 1) * third] = colours[label % len(colours)]
    return np.clip(img, 0, 255).astype(np.uint8)


def add_frames(store: Path, labels_of_video, seed: int = 0, size: int = 32, quality: int = 90) -> dict:
    """The store's frames group, as `pipeline extract --groups frames` writes it (features/jpeg.py's encoder),
    from ``labels_of_video[v]``: each second's class (one frame per second)."""
    from features.base import Options
    from features.jpeg import JPEGFrames

    s = FeatureStore(store)
    ext = JPEGFrames("frames", Options(short_side=size, jpeg_quality=quality))
    rng = np.random.default_rng(seed)
    rows = [ext(np.stack([class_frame(int(c), rng, size) for c in labels])) for labels in labels_of_video]
    n = len(rows)
    write_part(store, 0, "frames", rows, ["ok"] * n, [""] * n, [len(r) for r in rows], ext.dim)
    add_groups(store, {"frames": ext.provenance()})
    write_status_index(s, "frames")
    return ext.provenance()
