"""Clips from the feature store, as MCN's loader forms them (spec: shared/spec/mcn.md section 5).

Everything a clip needs is computed once, in RAM, when the data is built: caption merging up to
``min_time``, max-pooled video, pooled frozen audio (or the log-mel window for end-to-end audio) and
word ids. A training batch is then only an index gather, so ablations start in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.store import FeatureStore


@dataclass
class ClipData:
    video: torch.Tensor  # (N, Dv) float32: max-pool over the clip's 1 fps rows, L2-normalised
    audio: torch.Tensor  # (N, 1024) pooled frozen DAVEnet, or (N, 40, F) float16 log-mel window
    nframes: torch.Tensor  # (N,) unpadded log-mel frames (end-to-end) or zeros
    words: torch.Tensor  # (N, max_words) int64 into ``vectors``; padding -> the last (zero) row
    vectors: torch.Tensor  # (V + 1, 300) float32, last row zeros
    video_of: np.ndarray  # (N,) video index of each clip
    keys: np.ndarray  # (N,) clip keys
    labels: dict[str, np.ndarray]
    dropped: dict[str, int]
    valid: dict[str, torch.Tensor] | None = None  # per modality, when missing modalities are kept (masked)
    candidates: torch.Tensor | None = None  # (N, K) clip indices of each clip's K nearest narrations, -1 = none

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, idx, device="cpu"):
        idx = torch.as_tensor(idx, dtype=torch.long)
        words = self.vectors[self.words[idx]]
        return (self.video[idx].to(device), self.audio[idx].to(device).float(), words.to(device),
                self.nframes[idx].to(device))


def merge_captions(starts, ends, i: int, min_time: float, min_count: int = 1) -> tuple[int, int, list[int]]:
    """MCN's clip extension from caption i: grow towards the nearer neighbour until >= min_time (and, for
    MIL-NCE candidates, >= min_count captions; the same shortest-span rule).
    Returns (first, last, caption order for the words: current first, then neighbours as appended)."""
    s = e = i
    order = [i]
    while ends[e] - starts[s] < min_time or len(order) < min_count:
        has_prev, has_next = s > 0, e + 1 < len(starts)
        if has_prev and has_next:
            take_prev = ends[e] - starts[s - 1] <= ends[e + 1] - starts[s]
        elif has_prev or has_next:
            take_prev = has_prev
        else:
            break
        if take_prev:
            s -= 1
            order.append(s)
        else:
            e += 1
            order.append(e)
    return s, e, order


def _audio_frames(t: float) -> int:
    """librosa.time_to_frames(t, sr=16000, hop=160, n_fft=400), clamped at 0 (spec gotcha 7)."""
    return max(0, (int(t * 16000) - 200) // 160)


def load_clips(store: FeatureStore | str, modalities: str = "vat", min_time: float = 10.0, max_words: int = 20,
               end_to_end_audio: bool = False, audio_frames: int = 1000, keep_missing: bool = False,
               candidates: int = 0) -> ClipData:
    """Clips with every modality in ``modalities``; clips missing one are dropped (counted in ``dropped``),
    or kept with ``valid`` masks when ``keep_missing``. ``candidates`` > 0 also lists, per clip, the
    clips of its K nearest narrations in time (MIL-NCE positives)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    n = store.n_clips
    video_of = store.clips["video"].astype(np.int64)
    starts, ends = store.clips["start"], store.clips["end"]
    ok = np.ones(n, bool)
    dropped: dict[str, int] = {}
    valid: dict[str, np.ndarray] = {}

    def drop(mask, modality, why):
        valid[modality] = mask
        if keep_missing:
            return
        bad = ok & ~mask
        if bad.any():
            dropped[why] = int(bad.sum())
        ok[:] &= mask

    # caption merging inside each video (clips are stored sorted by video)
    span = np.zeros((n, 2))
    order: list[list[int]] = [[] for _ in range(n)]
    bounds = np.flatnonzero(np.r_[True, video_of[1:] != video_of[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        for i in range(a, b):
            s, e, o = merge_captions(starts[a:b], ends[a:b], i - a, min_time)
            span[i] = starts[a + s], ends[a + e]
            order[i] = [a + j for j in o]

    frames = store.load_group("resnet152") if "v" in modalities else None
    video = np.zeros((n, frames.data.shape[1] if frames else 1), np.float32)
    if frames:
        drop(frames.status[video_of] == "ok", "v", "video not ok")
        for i in np.flatnonzero(ok):
            rows = frames.video(video_of[i])[int(span[i, 0]):int(span[i, 1]) + 1].astype(np.float32)
            if len(rows):
                v = rows.max(axis=0)
                video[i] = v / max(np.linalg.norm(v), 1e-12)

    nframes = np.zeros(n, np.int64)
    audio = np.zeros((n, 1), np.float32)
    if "a" in modalities:
        group = store.load_group("logmel" if end_to_end_audio else "davenet")
        drop(group.status[video_of] == "ok", "a", f"{group.name} not ok")
        if end_to_end_audio:
            audio = np.zeros((n, 40, audio_frames), np.float16)
            for i in np.flatnonzero(ok):
                mel = group.video(video_of[i])[_audio_frames(span[i, 0]):_audio_frames(span[i, 1])][:audio_frames]
                audio[i, :, :len(mel)], nframes[i] = mel.T, len(mel)
        else:
            audio = np.zeros((n, group.data.shape[1]), np.float32)
            for i in np.flatnonzero(ok):
                rows = group.video(video_of[i])[int(np.floor(span[i, 0] * group.rate)):
                                               int(np.floor(span[i, 1] * group.rate)) + 1]
                if len(rows):
                    audio[i] = rows.astype(np.float32).mean(axis=0)

    vectors = np.zeros((1, 300), np.float32)
    words = np.zeros((n, max_words), np.int64)
    if "t" in modalities:
        ids, status, vectors = store.load_text()
        vectors = np.concatenate([vectors, np.zeros((1, vectors.shape[1]), np.float32)])
        words[:] = len(vectors) - 1
        drop(status == "ok", "t", "caption empty or no known words")
        for i in np.flatnonzero(ok):
            w = np.concatenate([ids[j] for j in order[i]])[:max_words]
            words[i, :len(w)] = w

    cand = None
    if candidates:
        cand = np.full((n, candidates), -1, np.int64)
        for a, b in zip(bounds[:-1], bounds[1:]):
            for i in range(a, b):
                picked = merge_captions(starts[a:b], ends[a:b], i - a, 0.0, candidates)[2][:candidates]
                cand[i, :len(picked)] = [a + j for j in picked]
    keep = np.flatnonzero(ok)
    if cand is not None:  # renumber to the kept clips; candidates that were dropped become -1
        new_index = np.full(n + 1, -1, np.int64)
        new_index[keep] = np.arange(len(keep))
        cand = torch.from_numpy(new_index[cand[keep]])
    return ClipData(torch.from_numpy(video[keep]), torch.from_numpy(audio[keep]), torch.from_numpy(nframes[keep]),
                    torch.from_numpy(words[keep]), torch.from_numpy(vectors), video_of[keep],
                    store.clips["key"][keep], {k: v[keep] for k, v in store.labels().items()}, dropped,
                    {m: torch.from_numpy(v[keep]) for m, v in valid.items()} if keep_missing else None, cand)
