"""`trainers compare`: runs side by side -- one table of their evaluation (every retrieval direction and
clustering of `trainers eval`), training time and steps, and the flags that differ between them; written
as a CSV and a PNG of bar charts (one per metric, chance marked)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

# config fields that say how a run ran, not what it computed, or are derived from the store: never "a flag
# that differs"
HOW = {"out", "resume", "loader_workers", "device", "log_every", "checkpoint_every", "video_dim", "audio_dim",
       "we_dim", "inputs", "provenance"}


def train_seconds(rows: list[dict]) -> float:
    """Training time from metrics.jsonl: a resumed run's clock restarts, so each stretch counts once."""
    total, last = 0.0, 0.0
    for t in (r["time"] for r in rows if r.get("time") is not None):
        if t < last:
            total += last
        last = t
    return total + last


def metrics_of(run: Path) -> tuple[dict, dict, dict]:
    """(config, headline metrics by column name, chance by column name) of a run with eval results."""
    cfg = json.loads((run / "config.json").read_text())
    ev = json.loads((run / "eval.json").read_text())
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run / "metrics.jsonl").exists() else []
    out, chance = {}, {}
    for d, r in ev.get("retrieval", {}).items():
        for k in ("R@1", "R@5", "R@10", "MedR"):
            out[f"{d} {k}"] = r[k]
        chance[f"{d} R@1"] = r["chance R@1"]
        for label, c in r.get("class", {}).items():
            out[f"{d} R@1 by {label}"] = c["R@1"]
            chance[f"{d} R@1 by {label}"] = c["chance R@1"]
    for key, r in ev.get("clustering", {}).items():
        for k in ("NMI", "ARI", "accuracy"):
            out[f"{k} {key}"] = r[k]
            chance[f"{k} {key}"] = r["chance"][k]
    out["train s"] = round(train_seconds(log), 1)
    out["steps"] = max((r["step"] + 1 for r in log), default=0)
    return {"method": cfg.get("method", "mcn"), **cfg, "eval store": ev["store"]}, out, chance


def compare(runs: list[str | Path], out: str | Path) -> dict:
    """Table of ``runs`` (those with eval.json; others are named and left out), written to ``out``.csv/.png."""
    runs = [Path(r) for r in runs]
    skipped = [str(r) for r in runs if not (r / "eval.json").is_file()]
    runs = [r for r in runs if (r / "eval.json").is_file()]
    if not runs:
        raise FileNotFoundError(f"none of these runs has eval results ({', '.join(skipped)}): run "
                                "`trainers eval --run RUN --store STORE` on each first")
    loaded = [metrics_of(r) for r in runs]
    names = [r.name for r in runs]
    keys = sorted({k for c, _, _ in loaded for k in c} - HOW)
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c, _, _ in loaded}) > 1]
    columns = list(dict.fromkeys(k for _, m, _ in loaded for k in m))
    chance = {k: v for _, _, ch in loaded for k, v in ch.items()}
    table = [{"run": n, **{f"--{k.replace('_', '-')}" if k not in ("method", "eval store") else k: c.get(k)
                           for k in differ}, **m} for n, (c, m, _) in zip(names, loaded)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = list(dict.fromkeys(k for row in table for k in row))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(table)
    plot(table, [c for c in columns if c not in ("steps",)], chance, out.with_suffix(".png"))
    return {"table": table, "columns": columns, "differ": differ, "chance": chance, "skipped": skipped,
            "csv": str(out.with_suffix(".csv")), "png": str(out.with_suffix(".png")),
            "stores": sorted({c["eval store"] for c, _, _ in loaded})}


def headline(columns: list[str]) -> list[str]:
    """The columns worth a chart: R@1 (instance and class level), MedR, NMI, and training time."""
    return [c for c in columns if c.endswith((" R@1", "MedR")) or " R@1 by " in c or c.startswith("NMI ")
            or c == "train s"]


def plot(table: list[dict], columns: list[str], chance: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = headline(columns)
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    names = [row["run"] for row in table]
    for ax, c in zip(axes.flat, cols):
        values = [row.get(c) if row.get(c) is not None else float("nan") for row in table]
        ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        if c in chance:
            ax.axhline(chance[c], color="k", linestyle="--", linewidth=1, label="chance")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title(c, fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def text(result: dict, columns: list[str] | None = None) -> str:
    """The table as text: runs x metrics (R@k and accuracy in %, NMI and ARI as fractions), a chance row, then
    each run's flags that differ from the others'."""
    table = result["table"]
    shown = columns or [c for c in result["columns"] if c.endswith(("R@1", "MedR")) or " R@1 by " in c
                        or c.startswith("NMI ") or c in ("train s", "steps")]
    head = ["run", *shown]
    cells = [[row["run"], *(fmt(h, row.get(h)) for h in shown)] for row in table]
    cells.append(["chance", *(fmt(h, result["chance"].get(h)) for h in shown)])
    width = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, width))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, width)) for r in cells]
    flags = [k for k in table[0] if k.startswith("--") or k in ("method", "eval store")]
    if flags:
        lines.append("flags that differ:")
        lines += [f"  {row['run']}: " + " ".join(f"{k} {row.get(k)}" for k in flags) for row in table]
    if len(result["stores"]) > 1:
        lines.append(f"WARNING: the runs were evaluated on different stores ({', '.join(result['stores'])})")
    if result["skipped"]:
        lines.append(f"left out (no eval.json; run `trainers eval`): {', '.join(result['skipped'])}")
    return "\n".join(lines)


def fmt(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("MedR") or column in ("train s", "steps"):
        return f"{value:g}"
    if column.startswith(("NMI ", "ARI ")):
        return f"{value:.3f}"
    return f"{100 * value:.1f}"  # R@k and accuracy: %
