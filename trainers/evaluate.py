"""`trainers eval`: embed a held-out store with a trained run, score retrieval and clustering,
export every clip's embeddings to <run>/embeddings.zarr."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clips import ClipSpec
from .data import ClipReader
from .loader import text_input, video_input
from .method import RENAMED
from .methods import method_of, methods
from .metrics import TIES, class_retrieval_metrics, clustering_metrics, retrieval_metrics
from .provenance import check_inputs
from .towers import check_tokenizer


def load_run(run: str | Path):
    """(config, raw config dict, model in eval mode) of a trained run of any method."""
    run = Path(run)
    if not (run / "model.pt").is_file():
        raise FileNotFoundError(f"{run} has no model.pt (train it first, e.g. `trainers mcn --out {run}`)")
    raw = json.loads((run / "config.json").read_text())
    name, known = raw.get("method", "mcn"), methods()
    if name not in known:
        raise ValueError(f"{run} was trained by {name!r}, which this mmcache does not have ({sorted(known)})")
    cls = known[name]
    if "video_dim" not in raw:
        raise ValueError(f"{run}: a {name} run from before `trainers eval` read them (no video_dim in its "
                         "config.json); retrain it, or read its own clustering metrics (results.json)")
    saved = {RENAMED.get(k, k): v for k, v in raw.items()}
    cfg = cls.Config(**{**cls.legacy, **{k: v for k, v in saved.items() if k in cls.Config.__dataclass_fields__}})
    model = cls.rebuild(cfg, raw, torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    return cfg, raw, model.eval()


@torch.no_grad()
def embed(model, reader: ClipReader, clips: np.ndarray, path: Path, keep: bool,
          batch: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """Every clip's embedding per space and modality, read from the store ``batch`` clips at a time and
    written as they come to ``path`` (Zarr: ``key``, ``<space>_<modality>``, one row per clip; committed
    by one rename). Returned in RAM only with ``keep``."""
    import uuid

    import zarr

    from pipeline.store import ColumnWriter, commit

    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    group, writer = zarr.open_group(str(tmp), mode="w"), None
    out: dict[str, dict[str, list]] = {}
    for idx, b in reader.iter_batches(clips, batch):
        inputs = (video_input(b, "cpu", reader.spec), torch.from_numpy(b["audio"]).float(),
                  text_input(b, reader.vectors, "cpu", reader.spec), torch.from_numpy(b["nframes"]))
        emb = {f"{space}_{m}": e.numpy().astype(np.float32) for space, d in model.embed(*inputs).items()
               for m, e in d.items()}
        if writer is None:
            writer = ColumnWriter(group, {"key": str, **{k: ("float32", e.shape[1]) for k, e in emb.items()}},
                                  chunk=1 << 14)
        writer.append({"key": reader.store.clip_keys(idx), **emb})
        if keep:
            for name, e in emb.items():
                space, m = name.rsplit("_", 1)
                out.setdefault(space, {}).setdefault(m, []).append(e)
    if writer is not None:
        writer.close()
    group.attrs.update({"layout": "one row per clip; arrays <space>_<modality>"})
    commit(tmp, path, replace=True)
    return {s: {m: np.concatenate(v) for m, v in d.items()} for s, d in out.items()}


DROPPED = {"skip": "clips missing a modality are left out of N", "miss": "each clip missing a modality is a missed "
           "query (the MSR-VTT convention)"}


def eval_spec(cfg, audio_frames: int | None = None) -> ClipSpec:
    """How ``cfg``'s run reads clips for evaluation (its method's ``eval_spec``), with ``audio_frames`` per
    end-to-end audio window if given (else the run's own)."""
    spec = method_of(cfg).eval_spec(cfg)
    return replace(spec, audio_frames=audio_frames or spec.audio_frames)


def similarities(emb: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, list[str], str]]:
    """Query x candidate scores per direction the model has spaces for, summed over those spaces: t<->v scores
    t.(v+a) where a space also holds audio (MCN on YouCook2), else t.v; a<->v a.v; a<->t a.t."""
    out = {}
    for pair in ("tv", "av", "at"):
        q, c = pair
        spaces = [s for s, e in emb.items() if q in e and c in e]
        if not spaces:
            continue
        audio = pair == "tv" and any("a" in emb[s] for s in spaces)
        sim = sum(emb[s][q] @ (emb[s][c] + (emb[s].get("a", 0) if pair == "tv" else 0)).T for s in spaces)
        score = f"{q}.({c}+a)" if audio else f"{q}.{c}"
        out[f"{q}->{c}"], out[f"{c}->{q}"] = (sim, spaces, score), (sim.T, spaces, score)
    return out


def evaluate(run: str | Path, store: str, label: str | None = None, audio_frames: int | None = None,
             max_score_clips: int = 50_000, ties: str = "pessimistic", dropped: str = "skip",
             allow_other_features: bool = False) -> dict:
    """Every retrieval direction the model has spaces for (instance-level, and class-level per label column),
    k-means clustering of each modality's and the fused embedding of each space against each label column,
    each with its chance level. Embeddings of every clip are exported, streamed; scoring needs an N x N
    matrix, so it runs for at most ``max_score_clips`` clips. ``ties``: pessimistic or optimistic (MCN's);
    ``dropped``: skip (clips missing a modality are left out, and counted) or miss (each is a missed query,
    the MSR-VTT convention). A store extracted otherwise than the training store is refused unless
    ``allow_other_features`` (trainers/provenance.py)."""
    if dropped not in DROPPED:
        raise ValueError(f"dropped {dropped!r}: choose {' or '.join(DROPPED)}")
    from sklearn.cluster import KMeans

    run = Path(run)
    cfg, raw, model = load_run(run)
    reader = ClipReader(store, eval_spec(cfg, audio_frames))
    other = check_inputs(raw, reader.store, allow_other_features)
    if getattr(cfg, "end_to_end_text", ""):
        check_tokenizer(cfg.end_to_end_text, reader.store, reader.spec.text_tokens)
    clips = reader.all_clips()
    score = len(clips) <= max_score_clips
    emb = embed(model, reader, clips, run / "embeddings.zarr", keep=score)
    left_out = reader.dropped()
    results: dict = {"run": str(run), "store": store, "clips": len(clips), "dropped": left_out,
                     "ties": f"{ties} ({TIES[ties]})", "dropped clips": f"{dropped} ({DROPPED[dropped]})",
                     **({"features differ from training (--allow-other-features)": other} if other else {})}
    if not score:
        results["not_scored"] = (f"{len(clips)} clips > --max-score-clips {max_score_clips}: retrieval needs an "
                                 "N x N score matrix; embeddings are exported")
        (run / "eval.json").write_text(json.dumps(results, indent=1))
        return results
    labels = reader.store.labels(clips)
    if label and label not in labels:
        raise KeyError(f"no label column {label!r} in {store} (have {sorted(labels)})")
    names = [label] if label else [k for k, v in labels.items() if 1 < len(np.unique(v)) < len(v)]
    results["retrieval"] = {}
    for direction, (sim, spaces, rule) in similarities(emb).items():
        missed = sum(left_out.values()) if dropped == "miss" else 0
        results["retrieval"][direction] = {**retrieval_metrics(sim, ties=ties, missed=missed), "spaces": spaces,
                                           "score": rule,
                                           "class": {n: class_retrieval_metrics(sim, labels[n]) for n in names}}
    results["clustering"] = {}
    for name in names:
        y = labels[name]
        k = len(np.unique(y))
        chance = clustering_metrics(y, np.random.default_rng(0).integers(0, k, len(y)))  # a random k-labelling
        for space, e in emb.items():
            for part, x in {**e, "fused": sum(e.values()) / len(e)}.items():
                if part == "fused" and len(e) == 1:
                    continue
                x = F.normalize(torch.from_numpy(x), dim=1).numpy()
                pred = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
                results["clustering"][f"{name}/{space}/{part}"] = {**clustering_metrics(y, pred), "k": k,
                                                                  "chance": chance}
    (run / "eval.json").write_text(json.dumps(results, indent=1))
    return results


def table(results: dict) -> str:
    lines = [f"eval of {results['run']} on {results['store']}: {results['clips']} clips; ties {results['ties']}; "
             f"dropped clips {results.get('dropped clips', 'skip')}: {results.get('dropped') or 'none'}"]
    for note in results.get("features differ from training (--allow-other-features)", []):
        lines.append(f"  WARNING: features differ from training: {note}")
    if "not_scored" in results:
        lines.append(f"  not scored: {results['not_scored']}")
    for d, r in results.get("retrieval", {}).items():
        tied = f", {r['tied queries']} tied queries" if r["tied queries"] else ""
        missed = f", {r['missed']} missed" if r.get("missed") else ""
        lines.append(f"  {d:5s} {r['score']:8s} R@1 {100 * r['R@1']:5.1f}  R@5 {100 * r['R@5']:5.1f}  "
                     f"R@10 {100 * r['R@10']:5.1f}  MedR {r['MedR']:4.0f}  (N={r['N']}{missed}, chance R@1 "
                     f"{100 * r['chance R@1']:.1f}{tied})")
        for name, c in r["class"].items():
            lines.append(f"        class-level by {name}: R@1 {100 * c['R@1']:5.1f}  R@5 {100 * c['R@5']:5.1f}  "
                         f"(chance R@1 {100 * c['chance R@1']:.1f})")
    for name, r in results.get("clustering", {}).items():
        lines.append(f"  cluster {name:22s} NMI {r['NMI']:.3f}  aNMI {r['aNMI']:.3f}  ARI {r['ARI']:.3f}  "
                     f"acc {r['accuracy']:.3f}  purity per cluster {r['mean cluster purity']:.3f}  "
                     f"(k={r['k']}; chance NMI {r['chance']['NMI']:.3f}, acc {r['chance']['accuracy']:.3f})")
    return "\n".join(lines)
