"""`trainers demo`: the product end to end on the built-in demo data, in a few minutes on 2 CPU cores --
narrated videos generated on the spot, extracted once (pipeline/demo.py), an ablation trained on the cache,
each run evaluated on the held-out clips and all compared side by side, beside chance and the raw frozen
features.

No pretrained weights can be downloaded here, so the frozen extractors are random-init: their pooled features
of different pictures are nearly the same vector (stored as float16, the differences are gone), and nothing
trained on them can show learning. What does: a video tower trained end to end on the cached JPEG frames
(and the text, whose word vectors tell the words apart).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SHARED = dict(combo="va+all", dim=256, videos_per_batch=8, clips_per_video=3, steps=150, warmup=15, lr=1e-3,
              min_time=0.0, clusters=4, cluster_every=10, queue_steps=2, normalize_audio=True,
              checkpoint_every=10**6)
VIDEO = dict(end_to_end_video="resnet18", video_frames=2, frame_size=48, crop_size=40)
RUNS = {  # name: (what it shows, its flags)
    "frozen": ("MCN heads on the frozen random-init features", {}),
    "e2e_video": ("+ resnet18 trained end to end on the cached frames", VIDEO),
    "e2e_video_mms": ("the same, MMS alone (--no-cluster --no-recon)", {**VIDEO, "no_cluster": True, "no_recon": True}),
}
SHOWN = ["t->v R@1", "t->v R@1 by task", "v->t R@1 by task", "a->v R@1 by task", "NMI task/all/v",
         "NMI task/all/t", "train s"]


def raw_nmi(store: str, label: str = "task") -> float:
    """k-means NMI of the held-out clips' raw frozen ResNet-152 features (pooled as the trainers read them)."""
    from sklearn.cluster import KMeans

    from .clips import ClipSpec
    from .data import ClipReader
    from .metrics import clustering_metrics

    reader = ClipReader(store, ClipSpec("v", 0.0))
    clips = reader.all_clips()
    y = reader.store.labels(clips)[label]
    x = reader.batch(clips)["video"]
    pred = KMeans(len(np.unique(y)), n_init=10, random_state=0).fit_predict(x)
    return clustering_metrics(y, pred)["NMI"]


def demo(out: str | Path = "demo", steps: int = SHARED["steps"], workers: int | None = None,
         progress: bool = True) -> dict:
    from pipeline.cli import print_summary
    from pipeline.demo import build_demo

    from .compare import compare, text
    from .evaluate import evaluate
    from .methods.mcn import MCNConfig
    from .report import plot
    from .train import train

    t0 = time.time()
    out = Path(out)
    print(f"1/4 generating the demo videos and extracting them once into {out}/features.zarr and {out}/eval.zarr "
          "(ResNet-152 and DAVEnet random-init: no pretrained weights here)")
    _, summaries = build_demo(out, workers=workers, progress=progress)
    for summary in summaries:
        print_summary(summary)
    runs = []
    for i, (name, (what, flags)) in enumerate(RUNS.items(), start=1):
        run = out / "runs" / name
        print(f"2/4 training {name} ({i}/{len(RUNS)}): {what}")
        train(MCNConfig(store=str(out / "features.zarr"), out=str(run), **{**SHARED, "steps": steps, **flags}),
              progress=progress)
        print(f"3/4 evaluating {name} on the held-out clips")
        evaluate(run, str(out / "eval.zarr"))
        plot(run)
        runs.append(run)
    result = compare(runs, out / "compare")
    raw = raw_nmi(str(out / "eval.zarr"))
    print(f"4/4 the runs side by side (R@1 and accuracy in %; {out}/compare.csv has every metric):")
    print(text(result, [c for c in SHOWN if c in result["columns"]]))
    print(f"raw frozen ResNet-152 features (random-init), k-means NMI vs task: {raw:.3f}")
    print(f"done in {(time.time() - t0) / 60:.1f} min: charts {result['png']}; per run: runs/<name>/eval.json, "
          "losses.png; next: `trainers map`, `trainers probe`, `trainers compare` (README)")
    return {**result, "raw NMI": raw}
