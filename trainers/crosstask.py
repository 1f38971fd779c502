"""`trainers crosstask`: zero-shot temporal step localisation, the CrossTask protocol as MCN reports it
(spec: shared/spec/mcn.md section 6.4).

Every second i of a video is scored against each step text of its task in the run's joint space: video
over [i, i + 1), audio over [i - 4, i + 4] s (the first and last 4 s use the first and last 8 s), the score
t.(v + a) summed over the spaces holding text and video (t.v where no space holds audio). CrossTask's
dynamic programme then puts each step on exactly one second, in the task's order. A step is found when
its second lies inside one of its annotated segments (rows floor(start)..ceil(end) - 1). Recall per task:
found steps / annotated steps over the task's videos (the official CrossTask average), then the mean over
tasks; MCN's variant (each video's recall averaged within the task) is reported beside it, and so is the
recall of random scores (chance).

Input: the videos extracted into a store by `pipeline extract`, and either the official CrossTask release
folder (`tasks_primary.txt`, `videos_val.csv` or another video list, `annotations/<task>_<video>.csv`: read by
:func:`read_release`) or our own pair: an annotation table (CSV: video_id, task, step, start, end; step is the
1-based index into the task's steps) and the steps (JSON {task: [step text, ...]}, or CSV: task, step, text).
Step texts are read as word2vec words up to --max-words (MCN's CrossTask runs: 30).
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def read_steps(path: str | Path) -> dict[str, list[str]]:
    """{task: [step texts in order]} from JSON {task: [texts]} or a CSV with task, step (1-based), text."""
    path = Path(path)
    if path.suffix == ".json":
        steps = json.loads(path.read_text())
        if not isinstance(steps, dict) or not all(isinstance(v, list) for v in steps.values()):
            raise ValueError(f"{path}: expected a JSON object {{task: [step text, ...]}}")
        return {str(k): [str(t) for t in v] for k, v in steps.items()}
    rows = defaultdict(dict)
    with open(path, newline="") as f:
        for n, r in enumerate(csv.DictReader(f), start=2):
            try:
                rows[str(r["task"])][int(r["step"])] = str(r["text"])
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path} line {n}: need columns task, step (an integer from 1), text ({e})") from None
    out = {}
    for task, by in rows.items():
        if sorted(by) != list(range(1, len(by) + 1)):
            raise ValueError(f"{path}: task {task!r} has steps {sorted(by)}; number them 1..K")
        out[task] = [by[k] for k in range(1, len(by) + 1)]
    return out


def read_annotations(path: str | Path, steps: dict[str, list[str]]) -> dict[str, tuple[str, list]]:
    """{video_id: (task, [(step index from 0, start s, end s), ...])}; every row checked."""
    out: dict = {}
    with open(path, newline="") as f:
        for n, r in enumerate(csv.DictReader(f), start=2):
            try:
                vid, task, k, a, b = r["video_id"], str(r["task"]), int(r["step"]), float(r["start"]), float(r["end"])
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path} line {n}: need columns video_id, task, step, start, end ({e})") from None
            if task not in steps:
                raise ValueError(f"{path} line {n}: task {task!r} has no steps in the steps file")
            if not 1 <= k <= len(steps[task]) or not 0 <= a < b:
                raise ValueError(f"{path} line {n}: step {k} of {len(steps[task])} over [{a}, {b}] s is not a step "
                                 "segment (step from 1, 0 <= start < end)")
            if vid in out and out[vid][0] != task:
                raise ValueError(f"{path} line {n}: video {vid!r} is annotated for tasks {out[vid][0]!r} and {task!r}")
            out.setdefault(vid, (task, []))[1].append((k - 1, a, b))
    return out


def read_release(folder: str | Path, videos: str = "videos_val.csv") -> tuple[dict, dict]:
    """(steps, annotations) of the official CrossTask release in ``folder``: ``tasks_primary.txt`` (per task,
    lines: id, title, wikiHow URL, step count, the comma-separated steps, a blank line), the video list
    ``videos`` (lines: task id, video id, URL; no header) and ``annotations/<task>_<video>.csv`` (lines: step
    from 1, start s, end s). Videos of the list without an annotation file are left out, as CrossTask's own
    evaluation does."""
    folder = Path(folder)
    path = folder / "tasks_primary.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a CrossTask release folder: no tasks_primary.txt")
    lines, steps = path.read_text().splitlines(), {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block = [x.strip() for x in lines[i:i + 5]]
        try:
            task, n = block[0], int(block[3])
            texts = [t.strip() for t in block[4].split(",")]
        except (IndexError, ValueError):
            raise ValueError(f"{path} line {i + 1}: expected 5 lines per task (id, title, URL, step count, "
                             "comma-separated steps)") from None
        if len(texts) != n:
            raise ValueError(f"{path} line {i + 5}: task {task} says {n} steps but lists {len(texts)}")
        steps[task] = texts
        i += 5
    notes: dict = {}
    with open(folder / videos, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2 or row[0].strip() not in steps:
                raise ValueError(f"{folder / videos} line {n}: expected task id, video id, URL with a task of "
                                 f"tasks_primary.txt (got {row[:2]})")
            task, vid = row[0].strip(), row[1].strip()
            ann = folder / "annotations" / f"{task}_{vid}.csv"
            if not ann.is_file():
                continue
            segments = []
            with open(ann, newline="") as g:
                for m, r in enumerate(csv.reader(g), start=1):
                    try:
                        k, a, b = int(r[0]), float(r[1]), float(r[2])
                    except (IndexError, ValueError):
                        raise ValueError(f"{ann} line {m}: expected step, start, end") from None
                    if not 1 <= k <= len(steps[task]) or not 0 <= a < b:
                        raise ValueError(f"{ann} line {m}: step {k} of {len(steps[task])} over [{a}, {b}] s")
                    segments.append((k - 1, a, b))
            notes[vid] = (task, segments)
    if not notes:
        raise ValueError(f"no video of {folder / videos} has a file in {folder / 'annotations'}")
    return steps, notes


def ground_truth(seconds: int, n_steps: int, segments) -> np.ndarray:
    """(T, K) bool: second t belongs to step k (CrossTask's read_assignment: rows floor(start)..ceil(end)-1)."""
    y = np.zeros((seconds, n_steps), bool)
    for k, a, b in segments:
        y[int(math.floor(a)):int(math.ceil(b)), k] = True
    return y


def align(scores: np.ndarray) -> np.ndarray:
    """CrossTask's DP (exactly one second per step, steps in order, background between): the (T, K) bool
    assignment maximising the summed scores of the chosen seconds; needs T >= K."""
    T, K = scores.shape
    if T < K:
        raise ValueError(f"{T} seconds cannot hold {K} steps, one second each")
    best = np.full((K, T), -np.inf)  # best[k, t]: steps 0..k placed, step k at second t
    best[0] = scores[:, 0]
    back = np.zeros((K, T), np.int64)  # back[k, t]: the second of step k - 1 behind best[k, t]
    seconds = np.arange(T)
    for k in range(1, K):
        run = np.maximum.accumulate(best[k - 1])  # the best placement of steps 0..k-1 up to each second
        at = np.maximum.accumulate(np.where(best[k - 1] >= run, seconds, 0))  # ... and where step k-1 sits
        best[k, 1:] = run[:-1] + scores[1:, k]
        back[k, 1:] = at[:-1]
    out = np.zeros((T, K), bool)
    t = int(np.argmax(best[K - 1]))
    for k in range(K - 1, -1, -1):
        out[t, k] = True
        t = int(back[k, t])
    return out


def recall(y: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(annotated steps found, annotated steps): a step counts when its chosen second is one of its own."""
    present = y.any(axis=0)
    return int((y & pred).any(axis=0)[present].sum()), int(present.sum())


def summarise(found: dict[str, list[tuple[int, int]]]) -> dict:
    """Per task and averaged: the official recall (sum found / sum annotated) and MCN's per-video mean."""
    tasks = {t: {"recall": sum(f for f, _ in v) / max(1, sum(n for _, n in v)),
                 "recall, per-video mean (MCN)": float(np.mean([f / n for f, n in v if n])), "videos": len(v)}
             for t, v in sorted(found.items())}
    return {"average recall": float(np.mean([r["recall"] for r in tasks.values()])),
            "average recall, per-video mean (MCN)": float(np.mean([r["recall, per-video mean (MCN)"]
                                                                    for r in tasks.values()])),
            "tasks": tasks}


def second_windows(seconds: int, half: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Video [i, i+1) and audio [i-4, i+4] per second, the audio window slid inside [0, T] (MCN's loader)."""
    i = np.arange(seconds, dtype=np.float64)
    a0 = np.clip(i - half, 0, max(0.0, seconds - 2 * half))
    return i, np.minimum(i + 1 - 1e-6, seconds), a0, np.minimum(a0 + 2 * half, seconds)


@torch.no_grad()
def crosstask(run: str | Path, store: str, steps_path: str | None = None, annotations_path: str | None = None,
              word2vec: str | None = None, chance_draws: int = 20, release: str | None = None,
              videos: str = "videos_val.csv", max_words: int = 30, allow_other_features: bool = False) -> dict:
    """Recall of the run on the annotated videos of ``store``: from the official ``release`` folder (its
    ``videos`` list) or from ``steps_path`` and ``annotations_path``."""
    from pipeline.store import FeatureStore

    from .data import ClipReader
    from .evaluate import eval_spec, load_run
    from .loader import video_input
    from .provenance import check_inputs
    from .texts import embed_texts

    cfg, raw, model = load_run(run)
    spec = eval_spec(cfg)
    if "t" not in spec.modalities:
        raise ValueError(f"{run}: CrossTask scores seconds against step texts: it needs a run with a text space "
                         f"(MCN or MMV; this is a {raw.get('method')} run)")
    if release:
        steps, notes = read_release(release, videos)
    elif steps_path and annotations_path:
        steps = read_steps(steps_path)
        notes = read_annotations(annotations_path, steps)
    else:
        raise ValueError("give the CrossTask release folder (--release), or --steps and --annotations")
    s = FeatureStore(store)
    other = check_inputs(raw, s, allow_other_features)
    reader = ClipReader(s, replace(spec, modalities="".join(m for m in "va" if m in spec.modalities)))
    texts = {task: embed_texts(model, cfg, s, words, word2vec, max_words) for task, words in steps.items()}
    index, rng = s.video_index, np.random.default_rng(0)
    found: dict = defaultdict(list)
    chance: dict = defaultdict(list)
    missing = []
    for vid, (task, segments) in sorted(notes.items()):
        v = index.get(vid)
        if v is None or not all(ok[v] for ok in reader.ok.values()):
            missing.append(vid)
            continue
        seconds = int(math.ceil(max(reader.duration[v], max(b for _, _, b in segments))))
        b = reader.windows(v, *second_windows(seconds))
        audio = torch.from_numpy(b["audio"]).float() if "a" in reader.spec.modalities else None
        emb = model.embed(video_input(b, "cpu", reader.spec), audio, None, torch.from_numpy(b["nframes"]))
        spaces = [sp for sp in texts[task] if sp in emb and "v" in emb[sp]]
        scores = sum((emb[sp]["v"] + emb[sp].get("a", 0)).numpy() @ texts[task][sp].T for sp in spaces)
        y = ground_truth(seconds, len(steps[task]), segments)
        found[task].append(recall(y, align(scores)))
        for _ in range(chance_draws):
            chance[task].append(recall(y, align(rng.random(y.shape))))
    if not found:
        raise ValueError(f"none of the {len(notes)} annotated videos is usable in {store} ({missing[:5]} ...): "
                         "extract them with `pipeline extract` first")
    out = {"run": str(run), "store": store, **summarise(found), "chance": summarise(chance)["average recall"],
           "missing videos": missing, "max words": max_words,
           **({"features differ from training (--allow-other-features)": other} if other else {})}
    (Path(run) / "crosstask.json").write_text(json.dumps(out, indent=1))
    return out
