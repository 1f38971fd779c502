"""`trainers export`: a run as others take it: `model.safetensors` (the weights, no pickle) and `RUN.md`, a run
card naming the method and recipe, the settings that differ from the paper's, the code and machine, the store
and the features it read, and the evaluation."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def export(run: str | Path) -> dict:
    """Write <run>/model.safetensors and <run>/RUN.md; returns their paths."""
    from safetensors.torch import save_file

    from .methods import methods

    run = Path(run)
    if not (run / "model.pt").is_file() or not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no finished run (model.pt and config.json): train it first")
    raw = json.loads((run / "config.json").read_text())
    name = raw.get("method", "mcn")
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}  # no shared storage: safetensors
    prov = raw.get("provenance", {})
    meta = {"method": name, "recipe": str(raw.get("recipe", "ours")), "mmcache": str(prov.get("mmcache")),
            "git": str(prov.get("git")), "config": json.dumps({k: v for k, v in raw.items()
                                                                if k not in ("inputs", "provenance")})}
    weights = run / "model.safetensors"
    save_file(tensors, str(weights), metadata=meta)
    cls = methods().get(name)
    card = run_card(run, raw, cls, hashlib.sha256(weights.read_bytes()).hexdigest(),
                    sum(t.numel() for t in tensors.values()))
    (run / "RUN.md").write_text(card)
    return {"weights": str(weights), "card": str(run / "RUN.md")}


def run_card(run: Path, raw: dict, cls, sha: str, parameters: int) -> str:
    prov, store = raw.get("provenance", {}), raw.get("provenance", {}).get("store", {})
    recipe = raw.get("recipe", "ours")
    lines = [f"# {run.name}: {raw.get('method', 'mcn')}, recipe `{recipe}`", ""]
    if cls is not None:
        lines.append(f"{cls.help}.")
        paper = cls.recipes()["paper"]
        differ = {k: (raw.get(k), v) for k, v in paper.items() if k in raw and raw.get(k) != v}
        if differ:
            lines += ["", "Settings that differ from the paper's recipe (docs/fidelity.md says why):", "",
                      "| setting | this run | paper |", "|---|---|---|",
                      *[f"| `--{k.replace('_', '-')}` | {a} | {b} |" for k, (a, b) in sorted(differ.items())]]
        else:
            lines += ["", "Every setting the paper's recipe fixes has the paper's value."]
    metrics = run / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x] if metrics.is_file() else []
    lines += ["", "## Training", "",
              f"- steps: {rows[-1]['step'] + 1 if rows else '?'}"
              + (f"; {rows[-1]['time'] / 60:.1f} min since its last start" if rows else ""),
              f"- code: mmcache {prov.get('mmcache', '?')}, git {prov.get('git') or 'not a checkout'}; Python "
              f"{prov.get('python', '?')}, torch {prov.get('torch', '?')}"
              + (f", CUDA {prov['cuda']}" if prov.get("cuda") else ""),
              f"- machine: {prov.get('device', '?')} (`--device {raw.get('device', 'cpu')}`), started "
              f"{prov.get('started', '?')}",
              f"- weights: `model.safetensors`, {parameters:,} parameters, SHA-256 `{sha}`",
              "", "## Data", "",
              f"- store: `{store.get('path', raw.get('store'))}`, {store.get('videos', '?')} videos, "
              f"{store.get('clips', '?')} clips, plan SHA-256 `{store.get('plan_sha256', '?')}`", "",
              "| group | extractor | weights SHA-256 | random init |", "|---|---|---|---|"]
    for g, p in (raw.get("inputs") or {}).items():
        sha_g = (p.get("weights_sha256") or "-")[:16]
        lines.append(f"| `{g}` | {p.get('extractor') or '-'} | `{sha_g}` | {p.get('random_init')} |")
    if (run / "eval.json").is_file():
        from .evaluate import table

        lines += ["", "## Evaluation (`trainers eval`)", "", "```", table(json.loads((run / "eval.json").read_text())),
                  "```"]
    return "\n".join(lines) + "\n"
