"""Synthetic feature stores with planted cross-modal structure, written with the real store writer."""
import numpy as np
import zarr

from pipeline.store import write_unit

CLIP_S = 2.0


def planted_store(path, n_videos, seed, word_vectors, mixers, clips_per_video=4, vocab=48, classes=0):
    """A store whose video and audio rows are fixed functions of each clip's caption words (+ noise).

    With ``classes``, each video belongs to a class that owns a slice of the vocabulary, so clips cluster
    by class in every modality; label_task is the class. Without, label_task = first word mod 3.
    """
    rng = np.random.default_rng(seed)
    wv, wa = mixers
    keys, video, start, text, task, ids = [], [], [], [], [], []
    frames, audio = [], []
    for v in range(n_videos):
        f_rows, a_rows = [], []
        own = np.array_split(np.arange(vocab), classes)[v % classes] if classes else np.arange(vocab)
        for c in range(clips_per_video):
            words = rng.choice(own, 3, replace=False)
            meaning = word_vectors[words].mean(0)
            f_rows.append(meaning @ wv + 0.05 * rng.normal(size=(int(CLIP_S), wv.shape[1])))
            a_rows.append(meaning @ wa + 0.05 * rng.normal(size=(int(CLIP_S * 6.25), 1024)))
            keys.append(f"v{v}#{c}")
            video.append(v)
            start.append(c * CLIP_S)
            text.append(" ".join(f"w{w}" for w in words))
            task.append(f"c{v % classes}" if classes else f"t{words[0] % 3}")
            ids.append(words.astype(np.int32))
        frames.append(np.concatenate(f_rows))
        audio.append(np.concatenate(a_rows))
    n = len(keys)
    write_unit(path / "videos", {"video_id": np.array([f"v{i}" for i in range(n_videos)], dtype=object),
                                 "path": np.array([""] * n_videos, dtype=object)}, {})
    write_unit(path / "clips", {"key": np.array(keys, dtype=object), "video": np.array(video, np.int32),
                                "start": np.array(start), "end": np.array(start) + CLIP_S - 0.01,
                                "text": np.array(text, dtype=object), "label_task": np.array(task, dtype=object)}, {})
    for name, rows in (("resnet152", frames), ("davenet", audio)):
        write_unit(path / "parts" / "p000000" / name, {
            "data": np.concatenate(rows).astype(np.float16),
            "offsets": np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64),
            "status": np.array(["ok"] * n_videos, dtype=object), "error": np.array([""] * n_videos, dtype=object),
            "duration": np.full(n_videos, clips_per_video * CLIP_S)}, {})
    write_unit(path / "word2vec", {"ids": np.concatenate(ids), "offsets": np.arange(n + 1, dtype=np.int64) * 3,
                                   "status": np.array(["ok"] * n, dtype=object),
                                   "vocab_rows": np.arange(vocab), "vectors": word_vectors.astype(np.float32)}, {})
    zarr.open_group(str(path), mode="a").attrs.update({"mmcache": {"version": 1, "part_size": n_videos},
                                                       "groups": {"resnet152": {}, "davenet": {}, "word2vec": {}}})
    return path
