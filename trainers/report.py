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
    keys = [k for k in rows[0] if k not in ("step", "time", "lr")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    for k in keys:
        axes[0].plot(steps, [r[k] for r in rows], label=k)
    axes[0].set(xlabel="step", ylabel="loss", title=f"{run.name}: losses")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in rows])
    axes[1].set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    out = run / "losses.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
