"""Clips from the feature store, formed as MCN's loader forms them (spec: shared/spec/mcn.md section 5),
read batch by batch.

Nothing per clip is held in RAM: a batch reads its videos' clip times, word ids and feature rows from the
store's memory-mapped units, then forms each clip (caption merging up to ``min_time``, max-pooled video,
pooled frozen audio or the log-mel window, word ids). Only per-video flags (status of each group, clips
with known words) are loaded at start-up. :func:`step_loader` runs this in DataLoader worker processes, so
reads overlap compute, and a batch stays a pure function of (seed, step).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from features.base import LOGMEL
from pipeline.store import FeatureStore

from .clips import LOGMEL_FLOOR, ClipSpec, _audio_frames, frame_crops, merge_captions


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1), 1e-12)[:, None]


def _pool(rows, a: np.ndarray, b: np.ndarray, op) -> np.ndarray:
    """Rows a[i]..b[i]-1 of one video (``rows(lo, hi)`` reads them, clamped to the video) pooled per clip:
    ``np.maximum`` -> max, ``np.add`` -> mean, as float32. Empty ranges give zeros.

    One torch reduction per clip over its contiguous rows, vectorised along the features: max in the store's
    dtype (exact; a NaN propagates), sums accumulated in float32. numpy's float16 max is emulated element by
    element, and ``ufunc.reduceat`` over axis 0 took 4.4 of the 4.5 s a batch took at MCN's sizes (now 0.42 s;
    ``benchmarks/train.py`` prints the loader's rate)."""
    lo, hi = int(a.min()), int(max(b.max(), a.min()))
    block = rows(lo, hi)
    n = len(block)
    a, b = np.minimum(a - lo, n), np.minimum(np.maximum(b, a) - lo, n)
    src, out = torch.from_numpy(block), torch.zeros((len(a), block.shape[1]), dtype=torch.float32)
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        if y <= x:
            continue
        if op is np.maximum:
            out[i] = torch.amax(src[x:y], dim=0)
        else:
            torch.sum(src[x:y], dim=0, dtype=torch.float32, out=out[i])
    if op is np.add:
        out /= torch.from_numpy(np.maximum(b - a, 1)).float()[:, None]
    return out.numpy()


class ClipReader:
    """Forms clips of a store on demand. Per-video flags are in RAM; per-clip data is read per batch."""

    def __init__(self, store: FeatureStore | str, spec: ClipSpec):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.spec = spec
        s, n = self.store, self.store.n_videos
        self.counts = np.diff(s.clip_offsets)
        self.video_groups = ((spec.frames_group,) if spec.frames_group else tuple(spec.video_groups)) \
            if "v" in spec.modalities else ()
        self.video_group = self.video_groups[0] if self.video_groups else None
        self.audio_group = (LOGMEL if spec.end_to_end_audio else spec.audio_group) if "a" in spec.modalities else None
        self.ok = {}  # per modality, per video
        for m, groups in (("v", self.video_groups), ("a", (self.audio_group,) if self.audio_group else ())):
            for group in groups:
                if group not in s.groups:
                    raise KeyError(f"{s.path} has no {group!r} group (have {sorted(s.groups)}); extract it first")
                self.ok[m] = self.ok[m] & s.video_ok(group) if m in self.ok else s.video_ok(group)
        self.text_group = spec.text_tokens or spec.text_embedding or "word2vec"
        self.text_ok = (s.text_ok_per_video(self.text_group) if "t" in spec.modalities or spec.candidates
                        else None)
        # padding id: word2vec -> the appended zero row of ``vectors``; tokens -> 0, masked
        self.pad = s.n_words() if self.text_ok is not None and self.text_group == "word2vec" else 0
        self.text_dim = int(s.groups[spec.text_embedding]["dim"]) if spec.text_embedding else 0
        self.video_dims = [int(s.groups[g]["dim"]) for g in self.video_groups]
        self.video_dim = sum(self.video_dims) or 1
        self.audio_dim = int(s.groups[self.audio_group]["dim"]) if self.audio_group else 1
        # clips that start at or after the decoded end have nothing to read: never used, counted in dropped()
        timed = self.video_group or self.audio_group
        self.duration = s.video_duration(timed) if timed else np.full(n, np.inf)
        self.beyond = s.video_clips_beyond(timed) if timed else np.zeros(n, np.int64)
        self.usable_count = self.counts - self.beyond if "t" not in spec.modalities else self.text_ok.copy()
        readable = np.logical_and.reduce([self.beyond > 0, *self.ok.values()])
        for v in np.flatnonzero(readable).tolist():  # rare among videos that decoded: count exactly
            self.usable_count[v] = len(self.usable_clips(v))

    @cached_property
    def vectors(self) -> torch.Tensor:
        """(words + 1, 300) float32: the store's word vectors and a zero row for padding. Loaded on first use,
        so loader workers (which only hand out ids) never hold them."""
        v = (self.store.word_vectors() if self.text_ok is not None and self.text_group == "word2vec"
             else np.zeros((0, 300), np.float32))
        return torch.from_numpy(np.concatenate([v, np.zeros((1, v.shape[1]), np.float32)]))

    # ---- which clips can be used ------------------------------------------------------------
    def usable_videos(self) -> np.ndarray:
        """Videos with at least one clip that has every modality (MCN drops the others)."""
        ok = self.usable_count > 0
        for m in self.ok.values():
            ok &= m
        return np.flatnonzero(ok)

    def dropped(self) -> dict[str, int]:
        """Clips left out by usable_videos / usable_clips, by first reason."""
        out, left = {}, np.ones(len(self.counts), bool)
        for m, why in (("v", f"{'+'.join(self.video_groups)} not ok"), ("a", f"{self.audio_group} not ok")):
            if m in self.ok and (bad := left & ~self.ok[m]).any():
                out[why] = int(self.counts[bad].sum())
                left &= self.ok[m]
        if n := int(self.beyond[left].sum()):
            out["clip starts after the video ends"] = n
        if "t" in self.spec.modalities and (n := int((self.counts[left] - self.beyond[left]
                                                      - self.usable_count[left]).sum())):
            out["caption empty or no known words"] = n
        return out

    def require_usable(self, what: str = "clips with every modality") -> None:
        """Raise a clear error, naming what is missing, when no video has a usable clip."""
        if len(self.usable_videos()):
            return
        have = [f"{int((self.counts > 0).sum())} of {len(self.counts)} videos have clips"]
        have += [f"{int(ok.sum())} have {g} ok" for g, ok in zip(("+".join(self.video_groups), self.audio_group), (
            self.ok.get("v"), self.ok.get("a"))) if ok is not None]
        if "t" in self.spec.modalities:
            have.append(f"{int((self.text_ok > 0).sum())} have a caption with known words")
        raise ValueError(f"{self.store.path} has no {what}: " + ", ".join(have) +
                         " (see `pipeline status`; extract the missing groups or use another store)")

    def usable_clips(self, v: int) -> np.ndarray:
        """Clip indices of video v that have every modality (text: at least one known word)."""
        a, b = int(self.store.clip_offsets[v]), int(self.store.clip_offsets[v + 1])
        keep = np.ones(b - a, bool)
        if self.beyond[v]:
            keep &= self.store.clip_rows("start", a, b) < self.duration[v]
        if "t" in self.spec.modalities and self.spec.clip_population == "strict":
            keep &= np.array([len(w) > 0 for w in self.store.word_ids_at(np.arange(a, b), self.text_group)], bool)
        return a + np.flatnonzero(keep)

    # ---- forming clips -------------------------------------------------------------------
    def batch(self, clips, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Arrays for the clips at indices ``clips`` (any order, repeats allowed):
        video (B, Dv) float32 (end to end: frames, see ClipSpec), audio (B, Da) float32 or (B, 40, F) float16,
        nframes (B,), words (B, W) ids into ``vectors`` (padding = the zero row), valid_<m> (B,) bool; with
        candidates also cand_words (B, K, W) and cand_ok (B, K). ``rng`` draws the augmentations (frames, audio
        gain)."""
        spec, s = self.spec, self.store
        clips = np.asarray(clips, dtype=np.int64)
        B, K, W = len(clips), spec.candidates, spec.max_tokens if spec.text_tokens else spec.max_words
        out = self._empty(B)
        if K:
            out["cand_words"] = np.full((B, K, W), self.pad, np.int64)
            out["cand_ok"] = np.zeros((B, K), bool)
            if spec.text_embedding:
                out["cand_emb"] = np.zeros((B, K, self.text_dim), np.float32)
        videos, inverse = np.unique(s.clip_video(clips), return_inverse=True)
        for k, v in enumerate(videos.tolist()):
            at = np.flatnonzero(inverse == k)
            a, b = int(s.clip_offsets[v]), int(s.clip_offsets[v + 1])
            starts, ends = s.clip_rows("start", a, b), s.clip_rows("end", a, b)
            ends_max = np.maximum.accumulate(ends)
            local = (clips[at] - a).tolist()
            merged = [merge_captions(starts, ends, i, spec.min_time, 1, ends_max) for i in local]
            cands = [[(o, merge_captions(starts, ends, o, spec.min_time, 1, ends_max)[2])
                      for o in merge_captions(starts, ends, i, 0.0, K)[2][:K]] for i in local] if K else []
            ids = None
            if self.text_ok is not None:  # word ids of the captions these clips use, not of the whole video
                used = np.unique([o for m in merged for o in m[2]] + [x for c in cands for _, order in c for x in order])
                ids = dict(zip(used.tolist(), s.word_ids_at(a + used, self.text_group)))
                if spec.text_embedding:
                    emb = dict(zip(used.tolist(), s.clip_text(spec.text_embedding, a + used).astype(np.float32)))
            self._media(out, at, v, starts[[m[0] for m in merged]], ends[[m[1] for m in merged]],
                        starts[clips[at] - a], rng)
            for n, (j, i, (_, _, order)) in enumerate(zip(at.tolist(), local, merged)):
                if ids is not None:
                    out["valid_t"][j] = len(ids[i]) > 0 if spec.clip_population == "strict" else \
                        any(len(ids[o]) for o in order)
                    w = np.concatenate([ids[o] for o in order])[:W]
                    out["words"][j, :len(w)], out["word_mask"][j, :len(w)] = w, True
                    if spec.text_embedding:
                        out["text_emb"][j] = self._mean_embedding(emb, ids, order)
                    for c, (o, cand_order) in enumerate(cands[n] if K else []):
                        w = np.concatenate([ids[x] for x in cand_order])[:W]
                        out["cand_words"][j, c, :len(w)] = w
                        out["cand_ok"][j, c] = len(ids[o]) > 0
                        if spec.text_embedding:
                            out["cand_emb"][j, c] = self._mean_embedding(emb, ids, cand_order)
        return out

    @staticmethod
    def _mean_embedding(emb: dict, ids: dict, order) -> np.ndarray:
        """The L2-normalised mean of the embeddings of the captions in ``order`` that were embedded (status ok)."""
        rows = [emb[o] for o in order if len(ids[o])]
        if not rows:
            return np.zeros_like(next(iter(emb.values())))
        m = np.mean(rows, axis=0)
        return m / max(float(np.linalg.norm(m)), 1e-12)

    def windows(self, v: int, t0: np.ndarray, t1: np.ndarray, a0: np.ndarray | None = None,
                a1: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Video and audio of video ``v`` over any time windows (no text): video over [t0, t1], audio over
        [a0, a1] (default the same), formed as a clip's are (CrossTask scores every second this way)."""
        t0, t1 = np.asarray(t0, np.float64), np.asarray(t1, np.float64)
        out = self._empty(len(t0))
        at = np.arange(len(t0))
        self._media(out, at, v, t0, t1, t0, None, t0 if a0 is None else np.asarray(a0, np.float64),
                    t1 if a1 is None else np.asarray(a1, np.float64))
        return out

    def _empty(self, B: int) -> dict[str, np.ndarray]:
        spec, c = self.spec, self.spec.crop_size
        W = spec.max_tokens if spec.text_tokens else spec.max_words
        return {"video": (np.zeros((B, spec.video_frames, 3, c, c), np.uint8) if spec.frames_group
                          else np.zeros((B, self.video_dim), np.float32)),
                "video_count": np.zeros(B, np.int64),
                "audio": (np.full((B, 40, spec.audio_frames), spec.audio_pad, np.float16) if spec.end_to_end_audio
                          else np.zeros((B, self.audio_dim), np.float32)),
                "nframes": np.zeros(B, np.int64), "words": np.full((B, W), self.pad, np.int64),
                "word_mask": np.zeros((B, W), bool), **{f"valid_{m}": np.zeros(B, bool) for m in "vat"},
                **({"text_emb": np.zeros((B, self.text_dim), np.float32)} if spec.text_embedding else {})}

    def _media(self, out: dict, at: np.ndarray, v: int, t0: np.ndarray, t1: np.ndarray, first: np.ndarray,
               rng: np.random.Generator | None, a0: np.ndarray | None = None, a1: np.ndarray | None = None) -> None:
        """Rows ``at`` of ``out``: video ``v``'s features (or frames) over [t0, t1] and audio over [a0, a1]
        (default the same), each cut where the video ends. A row whose ``first`` second is past the end has
        nothing to read: masked (MCN never samples it), never zeros passed off as features."""
        spec, s, dur = self.spec, self.store, self.duration[v]
        frames = ([s.video_rows(g, v) for g in self.video_groups] if "v" in self.ok and self.ok["v"][v] else None)
        audio = s.video_rows(self.audio_group, v) if "a" in self.ok and self.ok["a"][v] else None
        inside = first < dur
        out["valid_v"][at] = inside & (frames is not None)
        out["valid_a"][at] = inside & (audio is not None)
        t0, t1 = np.minimum(t0, dur), np.minimum(t1, dur)
        a0, a1 = (t0, t1) if a0 is None else (np.minimum(a0, dur), np.minimum(a1, dur))
        if spec.frames_group and frames is not None:
            for j, s0, s1 in zip(at.tolist(), t0, t1):  # the clip's frames: rows floor(s)..floor(e), 1 per second
                files = s.video_files(spec.frames_group, v, int(np.floor(s0)), int(np.floor(s1)) + 1)
                x = frame_crops(files, spec, rng)
                out["video"][j, :len(x)], out["video_count"][j] = x, len(x)
            frames = None
        col = 0
        for g, rows, dim in zip(self.video_groups, frames or [], self.video_dims):
            # MCN: rows floor(s*rate) .. floor(e*rate) (int(s)..int(e) at 1 per second), max-pooled,
            # L2-normalised per group, groups concatenated
            rate = s.rate(g)
            x = _pool(rows, np.floor(t0 * rate).astype(np.int64), np.floor(t1 * rate).astype(np.int64) + 1, np.maximum)
            out["video"][at, col:col + dim] = _unit(x)
            col += dim
        if audio is None:
            return
        if not spec.end_to_end_audio:
            rate = s.rate(self.audio_group)
            x = _pool(audio, np.floor(a0 * rate).astype(np.int64), np.floor(a1 * rate).astype(np.int64) + 1, np.add)
            out["audio"][at] = _unit(x) if spec.normalize_audio else x
            return
        for j, s0, s1 in zip(at.tolist(), a0, a1):
            f0 = _audio_frames(s0)
            if f0 < 0 and spec.clip_population == "strict":
                f0 = 0
            mel = audio(f0, min(_audio_frames(s1), f0 + spec.audio_frames)) if f0 >= 0 else audio(0, 0)
            if rng is not None and spec.audio_gain_db and len(mel):
                mel = np.where(mel > LOGMEL_FLOOR, np.maximum(mel + rng.uniform(-1, 1) * spec.audio_gain_db,
                                                              LOGMEL_FLOOR), mel)
            out["audio"][j, :, :len(mel)], out["nframes"][j] = mel.T, len(mel)

    def all_clips(self) -> np.ndarray:
        """Every usable clip, in store order (evaluation and whole-set passes; RAM: an int64 per clip)."""
        return np.concatenate([self.usable_clips(v) for v in self.usable_videos()] or [np.zeros(0, np.int64)])

    def iter_batches(self, clips: np.ndarray, size: int = 1024):
        """(clip indices, batch) over ``clips`` in order, ``size`` at a time."""
        for i in range(0, len(clips), size):
            yield clips[i:i + size], self.batch(clips[i:i + size])
