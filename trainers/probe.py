"""`trainers probe`: a linear probe and zero-shot classification on a run's exported clip embeddings (as MMV
and XDC evaluate on UCF101 / HMDB51 / ESC-50), any label column of the store as the target.

Linear probe: the chosen embeddings (default every space's video embedding, concatenated), standardised,
into scikit-learn's logistic regression; accuracy over stratified k folds, or on a given split (a label
column's value marks the test clips). Beside it: the same probe on the store's frozen features, pooled as
the trainer reads them (what training added), and chance (the largest class's share). Zero-shot: each clip
takes the class whose name, embedded by the run's text tower, scores highest (t.(v+a) as in retrieval).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.store.location import canonical


def probe_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, test: np.ndarray | None = None,
                   seed: int = 0) -> dict:
    """Logistic-regression accuracy of labels ``y`` from features ``x``: on the ``test`` rows (trained on the
    rest), else the mean and standard deviation over stratified ``folds``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(train, held):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(x[train], y[train])
        return float((model.predict(x[held]) == y[held]).mean())

    if test is not None:
        return {"accuracy": fit(~test, test), "test clips": int(test.sum())}
    smallest = int(np.unique(y, return_counts=True)[1].min())
    k = min(folds, smallest)
    if k < 2:
        raise ValueError(f"a class has {smallest} clip(s): too few for {folds}-fold cross-validation; give --split")
    scores = [fit(a, b) for a, b in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y)]
    return {"accuracy": float(np.mean(scores)), "std": float(np.std(scores)), "folds": k}


def zero_shot_accuracy(emb: dict[str, dict[str, np.ndarray]], classes: dict[str, np.ndarray], y: np.ndarray,
                       names: list) -> float:
    """Each clip's class: the class text scoring highest against it, t.(v+a) summed over the spaces holding
    text and video (t.v where a space holds no audio)."""
    spaces = [s for s in classes if s in emb and "v" in emb[s]]
    if not spaces:
        raise ValueError("zero-shot needs a space holding both video and text")
    sim = sum((emb[s]["v"] + emb[s].get("a", 0)) @ classes[s].T for s in spaces)
    return float((np.asarray(names)[sim.argmax(axis=1)] == y).mean())


def read_embeddings(run: Path, store: str) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Clip keys and {space: {modality: rows}} of ``trainers eval``'s export for ``store``."""
    import zarr

    path, ev = run / "embeddings.zarr", run / "eval.json"
    if not path.is_dir() or not ev.is_file():
        raise FileNotFoundError(f"{run} has no exported embeddings: run `trainers eval --run {run} --store {store}`")
    if canonical(json.loads(ev.read_text())["store"]) != canonical(store):
        raise ValueError(f"{path} holds the embeddings of {json.loads(ev.read_text())['store']}, not {store}: run "
                         f"`trainers eval --run {run} --store {store}` first")
    g = zarr.open_group(str(path), mode="r")
    emb: dict = {}
    for name in g.array_keys():
        if name != "key":
            space, m = name.rsplit("_", 1)
            emb.setdefault(space, {})[m] = g[name][...]
    return g["key"][...], emb


def frozen_features(run: Path, store: str, idx: np.ndarray) -> np.ndarray | None:
    """The store's frozen video features of the clips at ``idx``, pooled as the run's trainer reads them
    (None for a run that trained its own video tower)."""
    from .evaluate import eval_spec, load_run

    cfg, _, _ = load_run(run)
    spec = eval_spec(cfg)
    if spec.frames_group:
        return None
    from dataclasses import replace

    from .data import ClipReader

    reader = ClipReader(store, replace(spec, modalities="v"))
    return np.concatenate([reader.batch(idx[i:i + 4096])["video"] for i in range(0, len(idx), 4096)])


def probe(run: str | Path, store: str, label: str, features: str = "v", folds: int = 5, split: str | None = None,
          zero_shot: bool = False, class_names: str | None = None, word2vec: str | None = None,
          allow_other_features: bool = False) -> dict:
    from pipeline.store import FeatureStore

    from .evaluate import load_run
    from .provenance import check_inputs

    run = Path(run)
    keys, emb = read_embeddings(run, store)
    s = FeatureStore(store)
    other = check_inputs(load_run(run)[1], s, allow_other_features)
    idx = s.clip_index(keys)
    labels = s.labels(idx)
    if label not in labels:
        raise KeyError(f"no label column {label!r} in {store} (have {sorted(labels)})")
    y = np.asarray(labels[label]).astype(str)
    test = None
    if split:
        column, _, value = split.partition("=")
        if column not in labels or not value:
            raise ValueError(f"--split {split!r}: give COLUMN=VALUE with a label column of {store} "
                             f"(have {sorted(labels)})")
        test = np.asarray(labels[column]).astype(str) == value
        if not 0 < test.sum() < len(test):
            raise ValueError(f"--split {split!r} selects {int(test.sum())} of {len(test)} clips: no train/test split")
    wanted = [(sp, m) for sp, e in emb.items() for m in e if m in features] if features in ("v", "a", "t", "va", "vat") \
        else [tuple(f.rsplit("_", 1)) for f in features.split(",")]
    if not wanted or any(sp not in emb or m not in emb[sp] for sp, m in wanted):
        raise KeyError(f"--features {features!r}: the export holds "
                       f"{sorted(f'{sp}_{m}' for sp, e in emb.items() for m in e)} (or give v, a, t, va)")
    x = np.concatenate([emb[sp][m] for sp, m in wanted], axis=1)
    counts = np.unique(y, return_counts=True)[1]
    out = {"run": str(run), "store": store, "label": label, "clips": len(y), "classes": len(counts),
           "features": [f"{sp}_{m}" for sp, m in wanted],
           "chance (largest class)": float(counts.max() / len(y)),
           "linear probe": probe_accuracy(x, y, folds, test),
           **({"features differ from training (--allow-other-features)": other} if other else {})}
    raw = frozen_features(run, store, idx)
    if raw is not None:
        out["linear probe, frozen features"] = probe_accuracy(raw, y, folds, test)
    if zero_shot:
        from .evaluate import load_run
        from .texts import embed_texts

        cfg, _, model = load_run(run)
        names = sorted(set(y))
        texts = dict(zip(names, names))
        if class_names:
            import csv

            with open(class_names, newline="") as f:
                texts.update({str(r["label"]): str(r["text"]) for r in csv.DictReader(f)})
        classes = embed_texts(model, cfg, s, [texts[n] for n in names], word2vec)
        out["zero-shot"] = {"accuracy": zero_shot_accuracy(emb, classes, y, names), "chance": 1 / len(names),
                            "class texts": texts}
    (run / f"probe-{label}.json").write_text(json.dumps(out, indent=1))
    return out
