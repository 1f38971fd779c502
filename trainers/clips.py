"""What a trainer asks of each clip (ClipSpec) and the pieces a clip is formed from: captions merged into a
span as MCN's loader merges them (spec: shared/spec/mcn.md section 5), audio frame indices, JPEG frames
decoded, scaled and cropped."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.audio import FLOOR_DB as LOGMEL_FLOOR


@dataclass(frozen=True)
class ClipSpec:
    """What a trainer asks of each clip."""
    modalities: str = "vat"  # which of v, a, t are read
    min_time: float = 10.0  # merge neighbouring captions until the clip lasts this long (MCN)
    max_words: int = 20
    end_to_end_audio: bool = False  # log-mel windows instead of pooled frozen audio features
    audio_group: str = "davenet"  # the frozen audio group: rows per second, sum-pooled over the clip
    audio_frames: int = 1000
    audio_pad: float = LOGMEL_FLOOR  # log-mel padding: silence; MCN pads with 0 dB, the loudest value
    normalize_audio: bool = False  # L2-normalise pooled frozen audio features (as the video groups are)
    # mcn: every clip is used, one whose own caption has no known word takes its merged neighbours' words (or
    # none), and a clip starting before 12.5 ms gets an empty audio window (librosa's negative frame, as MCN's
    # loader slices it); strict: such clips are left out, and audio windows start at frame 0
    clip_population: str = "strict"
    candidates: int = 0  # > 0: also the words of each clip's K nearest narrations (MIL-NCE positives)
    # a per-clip text group's tokenizer ids (hf_text) instead of word2vec word ids: "words" holds up to
    # max_tokens ids of the merged captions (each caption's ids as its tokenizer gave them, special tokens
    # included, one after another), "word_mask" which are real
    text_tokens: str = ""
    max_tokens: int = 64
    # a per-clip sentence-embedding group (hf_text) as frozen text: "text_emb" (B, D) holds each clip's
    # embedding (a merged clip: the L2-normalised mean of its captions'), "cand_emb" (B, K, D) its candidates'
    text_embedding: str = ""
    video_groups: tuple[str, ...] = ("resnet152",)  # several: each pooled and L2-normalised, concatenated (MCN 2D|3D)
    # end-to-end video: the frames themselves from an encoded frames group (JPEG files, features/jpeg.py)
    # instead of pooled features: "video" holds video_frames frames evenly spaced over each clip (B, F, 3,
    # crop, crop) uint8, "video_count" how many are real; short side scaled to frame_size, then a crop_size
    # square: the centre, or with ``augment`` a random one per clip (crop) and a horizontal flip (flip)
    frames_group: str = ""
    video_frames: int = 4
    frame_size: int = 128
    crop_size: int = 112
    augment: str = ""
    # end-to-end audio in training: each clip's log-mel shifted by a random gain, U(-g, g) dB (values at the
    # floor stay silence; SeLaVi's volume jitter x U(0.9, 1.1) is g = 0.9)
    audio_gain_db: float = 0.0


FRAMES_GROUP = "frames"  # the encoded frames group end-to-end video reads


def check_augment(flag: str) -> None:
    if bad := set(filter(None, flag.split(","))) - {"crop", "flip"}:
        raise ValueError(f"--augment {flag!r}: unknown {sorted(bad)}; choose from crop,flip (or '')")


def video_groups(flag: str) -> tuple[str, ...]:
    """--video-groups resnet152,r2plus1d_18 -> ('resnet152', 'r2plus1d_18')."""
    return tuple(g.strip() for g in flag.split(",") if g.strip())


MERGE_CAP = 32  # captions MCN's loop merges per clip before the span is completed by search (see merge_captions)


def merge_captions(starts, ends, i: int, min_time: float, min_count: int = 1,
                   ends_max: np.ndarray | None = None) -> tuple[int, int, list[int]]:
    """MCN's clip extension from caption i: grow towards the nearer neighbour until >= min_time (and, for
    MIL-NCE candidates, >= min_count captions; the same shortest-span rule).
    Returns (first, last, caption order for the words: current first, then neighbours as appended).

    MCN's loop, step for step, for the first MERGE_CAP captions: every clip of real narration (a few
    captions per 10 s). Past that (thousands of tiny captions inside ``min_time``) the loop would take a step
    per caption for every clip, quadratic over a video; the span is then completed in O(log n) by
    :func:`_complete_span`, and the words come from the first MERGE_CAP captions merged. ``ends_max`` is
    ``np.maximum.accumulate(ends)`` (computed here if not given)."""
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
        if len(order) > MERGE_CAP and len(order) >= min_count:
            s, e = _complete_span(starts, ends, s, e, min_time, ends_max)
            break
        if take_prev:
            s -= 1
            order.append(s)
        else:
            e += 1
            order.append(e)
    return s, e, order


def _complete_span(starts, ends, s: int, e: int, min_time: float, ends_max=None) -> tuple[int, int]:
    """Widen captions s..e to a span of at least ``min_time``: half the missing time to the left (the last
    caption starting at or before it), then right to the first caption ending at or after start + min_time;
    at the end of the video, further left instead. Two binary searches (captions are sorted by start)."""
    starts = np.asarray(starts)
    ends_max = np.maximum.accumulate(np.asarray(ends)) if ends_max is None else ends_max
    missing = min_time - (ends[e] - starts[s])
    s = min(s, max(0, int(np.searchsorted(starts, starts[s] - missing / 2, side="right")) - 1))
    j = int(np.searchsorted(ends_max, starts[s] + min_time, side="left"))
    if j < len(ends_max):
        return s, max(e, j)
    e = len(ends_max) - 1
    return min(s, max(0, int(np.searchsorted(starts, ends[e] - min_time, side="right")) - 1)), e


def _audio_frames(t: float) -> int:
    """librosa.time_to_frames(t, sr=16000, hop=160, n_fft=400): -1 or -2 for t < 12.5 ms (spec gotcha 7)."""
    return (int(t * 16000) - 200) // 160


def frame_crops(files: list[np.ndarray], spec: ClipSpec, rng: np.random.Generator | None) -> np.ndarray:
    """(n, 3, crop, crop) uint8: up to ``spec.video_frames`` JPEG files evenly spaced over ``files``, decoded,
    short side scaled to ``frame_size`` (Pillow, antialiased bilinear), cropped square: the centre, or (``rng``
    and crop in ``augment``) one random position for all the clip's frames; flipped together (flip, p = .5)."""
    import io

    from PIL import Image

    from features.jpeg import scaled

    n, c = min(spec.video_frames, len(files)), spec.crop_size
    augment = spec.augment.split(",") if rng is not None else []
    where = rng.random(2) if "crop" in augment else (0.5, 0.5)
    flip = "flip" in augment and rng.random() < 0.5
    out = np.zeros((n, 3, c, c), np.uint8)
    for k, i in enumerate(np.linspace(0, len(files) - 1, n).round().astype(int).tolist()):
        im = Image.open(io.BytesIO(files[i].tobytes()))
        im.draft("RGB", (spec.frame_size, spec.frame_size))  # DCT-domain downscale on decode where it can
        im = im.convert("RGB")
        if min(im.size) != spec.frame_size:
            im = im.resize(scaled(im.size, spec.frame_size), Image.BILINEAR)
        x = np.asarray(im)
        if min(x.shape[:2]) < c:
            raise ValueError(f"--crop-size {c} exceeds the frames' size {x.shape[:2]}; lower it")
        top, left = (int(w * (m - c + 1) - 1e-9) for w, m in zip(where, x.shape[:2]))
        x = x[top:top + c, left:left + c]
        out[k] = (x[:, ::-1] if flip else x).transpose(2, 0, 1)
    return out
