"""Synthetic feature stores with planted cross-modal structure, written with the store's own writer API
(plan_store from a clip-per-row manifest, write_part per unit, write_text for the word ids)."""
import csv

import numpy as np

from pipeline.plan import plan_store
from pipeline.store import FeatureStore, add_groups, write_part, write_text

CLIP_S = 2.0


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
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = path.parent / f"{path.name}.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start", "end", "text", "task"], *rows])
    plan_store(path, str(manifest), part_size=n_videos)
    ok = ["ok"] * n_videos
    for name, data in (("resnet152", frames), ("davenet", audio)):
        write_part(path, 0, name, data, ok, [""] * n_videos, [clips_per_video * CLIP_S] * n_videos,
                   data[0].shape[1])
    store = FeatureStore(path)
    write_text(store, [(["ok"] * len(ids), ids)], vocab, lambda used: word_vectors[used])
    add_groups(path, {"resnet152": {"dim": wv.shape[1]}, "davenet": {"dim": 1024}, "word2vec": {"dim": 300}})
    return path
