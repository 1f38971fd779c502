"""Pictures of a run: `trainers report` (loss curves on a log scale, and the retrieval table of its last
`trainers eval`) and `trainers map` (a 2-D map of its exported clip embeddings coloured by a label)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retrieval_rows(ev: dict) -> list[list[str]]:
    """The retrieval table of an eval.json: direction, score, R@1/5/10 (%), MedR, N, chance R@1 (%)."""
    rows = [["", "score", "R@1", "R@5", "R@10", "MedR", "N", "chance R@1"]]
    for d, r in ev.get("retrieval", {}).items():
        rows.append([d, r["score"], *(f"{100 * r[k]:.1f}" for k in ("R@1", "R@5", "R@10")), f"{r['MedR']:g}",
                     str(r["N"]), f"{100 * r['chance R@1']:.1f}"])
        rows += [[f"  by {n}", "class", f"{100 * c['R@1']:.1f}", f"{100 * c['R@5']:.1f}", "", "", "",
                  f"{100 * c['chance R@1']:.1f}"] for n, c in r.get("class", {}).items()]
    return rows


def plot(run: str | Path) -> Path:
    plt = _pyplot()
    run = Path(run)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    if not rows:
        raise ValueError(f"{run}/metrics.jsonl is empty")
    diagnostics = ("step", "time", "lr", "input_wait", "sk_iterations", "clusters_used")  # in metrics.jsonl, not plotted
    keys = sorted({k for r in rows for k in r if k not in diagnostics and not k.startswith("clusters_")
                   and r[k] is not None})
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    table = retrieval_rows(ev)
    fig, axes = plt.subplots(1, 3 if len(table) > 1 else 2, figsize=(17 if len(table) > 1 else 11, 4))
    for k in keys:  # some series are logged only at some steps (e.g. label updates)
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        axes[0 if "nmi" not in k else 1].plot(*zip(*pts), label=k, marker="." if len(pts) < 50 else None)
    # log scale: a loss of 0.05 stays visible beside one of 50 (a term that is 0, e.g. switched off, is dropped)
    if any(y > 0 for line in axes[0].lines for y in line.get_ydata()):
        axes[0].set_yscale("log")
    method = json.loads((run / "config.json").read_text()).get("method", "?") if (run / "config.json").is_file() \
        else "?"
    axes[0].set(xlabel="step", ylabel="loss", title=f"{run.name} ({method}): losses, log scale")
    has_nmi = bool(axes[1].lines)  # pseudo-label methods: how much each relabelling changed the labels
    if any("lr" in r for r in rows):
        axes[1].plot([r["step"] for r in rows if "lr" in r], [r["lr"] for r in rows if "lr" in r], label="lr")
    axes[1].set(xlabel="step", title=" and ".join(
        t for t, shown in (("learning rate", any("lr" in r for r in rows)),
                           ("NMI between consecutive labellings", has_nmi)) if shown))
    for ax in axes[:2]:
        if ax.lines:
            ax.legend()
    if not axes[1].lines:
        axes[1].axis("off")
    if len(table) > 1:
        axes[2].axis("off")
        t = axes[2].table(cellText=table[1:], colLabels=table[0], loc="center", cellLoc="right")
        t.auto_set_font_size(False)
        t.set_fontsize(8)
        axes[2].set_title(f"retrieval on {Path(ev['store']).name} ({ev['clips']} clips; %)")
    fig.tight_layout()
    out = run / "losses.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def embedding_map(run: str | Path, store: str, label: str, array: str | None = None, method: str = "pca",
                  max_points: int = 5000) -> Path:
    """``<run>/map-<label>.png``: the exported embeddings (``array``, e.g. all_v, or several comma-separated,
    concatenated; default the first space's video embedding) projected to 2-D by PCA or t-SNE (scikit-learn),
    a point per clip coloured by ``label``; at most ``max_points`` clips (an even sample)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from pipeline.store import FeatureStore

    from .probe import read_embeddings

    if method not in ("pca", "tsne"):
        raise ValueError(f"--method {method!r}: choose pca or tsne")
    run = Path(run)
    keys, emb = read_embeddings(run, store)
    names = [f"{s}_{m}" for s, e in emb.items() for m in e]
    if array is None:  # the video embedding of the first space that has one
        space = next((sp for sp, e in emb.items() if "v" in e), next(iter(emb)))
        array = f"{space}_{'v' if 'v' in emb[space] else next(iter(emb[space]))}"
    picked = array.split(",")
    if any(n not in names for n in picked):
        raise KeyError(f"--embedding {array!r}: the export holds {names}")
    take = np.linspace(0, len(keys) - 1, min(len(keys), max_points)).astype(int)
    x = np.concatenate([emb[n.rsplit("_", 1)[0]][n.rsplit("_", 1)[1]][take] for n in picked], axis=1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = FeatureStore(store)
    labels = s.labels(s.clip_index(keys[take]))
    if label not in labels:
        raise KeyError(f"no label column {label!r} in {store} (have {sorted(labels)})")
    y = np.asarray(labels[label]).astype(str)
    xy = (PCA(2, random_state=0) if method == "pca" else
          TSNE(2, perplexity=min(30, len(x) - 1), init="pca", random_state=0)).fit_transform(x)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    classes = sorted(set(y))
    for i, c in enumerate(classes):
        at = y == c
        colour = plt.cm.tab10(i) if len(classes) <= 10 else plt.cm.tab20(i % 20)
        ax.scatter(xy[at, 0], xy[at, 1], s=10, color=colour, label=c if len(classes) <= 20 else None)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2)
    ax.set_title(f"{run.name}: {array} by {label} ({method.upper()}, {len(x)} clips)", fontsize=9)
    fig.tight_layout()
    out = run / f"map-{label}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
