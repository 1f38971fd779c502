"""`trainers report`: loss curves of a run as a PNG."""
from __future__ import annotations

import json
from pathlib import Path


def plot(run: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    if not rows:
        raise ValueError(f"{run}/metrics.jsonl is empty")
    diagnostics = ("step", "time", "lr", "sk_iterations", "clusters_used")  # in metrics.jsonl, not plotted
    keys = sorted({k for r in rows for k in r if k not in diagnostics and not k.startswith("clusters_")
                   and r[k] is not None})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:  # some series are logged only at some steps (e.g. label updates)
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        axes[0 if "nmi" not in k else 1].plot(*zip(*pts), label=k, marker="." if len(pts) < 50 else None)
    axes[0].set(xlabel="step (iteration for xdc)", title=f"{run.name}: losses")
    axes[1].set(xlabel="step", title="NMI between consecutive labellings")
    if any("lr" in r for r in rows):
        axes[1].plot([r["step"] for r in rows if "lr" in r], [r["lr"] for r in rows if "lr" in r], label="lr")
        axes[1].set_title("learning rate / NMI between labellings")
    for ax in axes:
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    out = run / "losses.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
