"""`trainers compare`: runs side by side -- one table of their evaluation (every retrieval direction and
clustering of `trainers eval`), training time and steps, and the flags that differ between them; written
as a CSV and a PNG of bar charts (one per kind of number, the runs side by side, chance marked)."""
from __future__ import annotations

import csv
import json
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
    differ = flags_that_differ([c for c, _, _ in loaded])
    columns = list(dict.fromkeys(k for _, m, _ in loaded for k in m))
    chance = {k: v for _, _, ch in loaded for k, v in ch.items()}
    table = [{"run": n, "method": c["method"],
              **{f"--{k.replace('_', '-')}" if k not in ("method", "eval store", "store") else k: c.get(k)
                 for k in differ if k != "method"}, **m} for n, (c, m, _) in zip(names, loaded)]
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


def flags_that_differ(configs: list[dict]) -> list[str]:
    """The config keys whose values differ between runs of the same method (runs of different methods differ in
    everything: their method is what differs), plus "method" when several are compared, and "eval store" when
    the stores differ."""
    out = []
    by_method: dict[str, list[dict]] = {}
    for c in configs:
        by_method.setdefault(c["method"], []).append(c)
    for group in by_method.values():
        keys = sorted({k for c in group for k in c} - HOW - {"method", "eval store", "store", "config"})
        out += [k for k in keys if k not in out and len({json.dumps(c.get(k), sort_keys=True) for c in group}) > 1]
    extra = [k for k in ("method", "eval store", "store") if len({str(c.get(k)) for c in configs}) > 1]
    return extra + out


def panels(columns: list[str]) -> list[tuple[str, list[str], float, str]]:
    """(title, columns, scale, unit) of each chart: one per kind of number, its bars grouped by what it measures."""
    r1 = [c for c in columns if c.endswith(" R@1") and " by " not in c]
    by = [c for c in columns if " R@1 by " in c]
    medr = [c for c in columns if c.endswith(" MedR")]
    nmi = [c for c in columns if c.startswith("NMI ")]
    out = [("Retrieval R@1, % (higher is better)", r1, 100, "%"),
           ("Class-level R@1, % (higher is better)", by, 100, "%"),
           ("Median rank of the true item (lower is better)", medr, 1, "rank"),
           ("k-means NMI against the labels (higher is better)", nmi, 1, "NMI"),
           ("Training time, minutes", ["train s"] if "train s" in columns else [], 1 / 60, "min")]
    return [p for p in out if p[1]]


def plot(table: list[dict], columns: list[str], chance: dict, path: Path) -> None:
    """One chart per kind of number (R@1 in %, median rank marked lower-is-better, NMI, time), the runs as
    grouped bars with a legend, chance as a black line over its group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    charts = panels(columns)
    names = [row["run"] for row in table]
    fig, axes = plt.subplots(len(charts), 1, figsize=(max(8.0, 1.1 * max(len(c) for _, c, _, _ in charts)
                                                           * max(1, len(names)) ** 0.5 + 3), 3.2 * len(charts)),
                             squeeze=False)
    width = 0.8 / max(1, len(names))
    for ax, (title, cols, scale, unit) in zip(axes[:, 0], charts):
        x = np.arange(len(cols))
        for i, (name, row) in enumerate(zip(names, table)):
            values = [row.get(c) * scale if row.get(c) is not None else np.nan for c in cols]
            ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=name, color=f"C{i}")
        for k, c in enumerate(cols):
            if c in chance:
                ax.hlines(chance[c] * scale, k - 0.42, k + 0.42, colors="k", linestyles="--", linewidth=1.2,
                          label="chance" if k == 0 or not any(cc in chance for cc in cols[:k]) else None)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(unit, fontsize=10)
        labels = [{"train s": "all runs"}.get(c, c.replace(" R@1 by ", " by ").replace(" R@1", "")
                                             .replace(" MedR", "").replace("NMI ", "")) for c in cols]
        ax.set_xticks(x, labels, rotation=20 if len(cols) > 6 else 0, ha="right" if len(cols) > 6 else "center",
                      fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.2 * len(charts))))
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
    flags = [k for k in table[0] if k.startswith("--") or k in ("eval store", "store")]
    if flags:
        lines.append("flags that differ between runs of the same method:")
        for row in table:
            said = [f"{k} {shown_value(row[k])}" for k in flags if row.get(k) is not None]
            lines.append(f"  {row['run']} ({row['method']}): " + (" ".join(said) or "-"))
    if len(result["stores"]) > 1:
        lines.append(f"WARNING: the runs were evaluated on different stores ({', '.join(result['stores'])})")
    if result["skipped"]:
        lines.append(f"left out (no eval.json; run `trainers eval`): {', '.join(result['skipped'])}")
    return "\n".join(lines)


def shown_value(value) -> str:
    return "''" if value == "" else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def fmt(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("MedR") or column in ("train s", "steps"):
        return f"{value:g}"
    if column.startswith(("NMI ", "ARI ")):
        return f"{value:.3f}"
    return f"{100 * value:.1f}"  # R@k and accuracy: %
