"""`trainers xdc`: cross-modal deep clustering (Alwassel et al. 2020) and its SDC / MDC / CDC baselines.

Spec: shared/spec/mmv_xdc_selavi.md section 3 (DeepCluster's loop). Each iteration: encode every clip
(eval mode) -> PCA-whiten + L2 -> k-means (scikit-learn) per source -> fresh linear heads -> train the
encoders with cross-entropy on the pseudo-labels, sampling clusters uniformly. NMI between consecutive
labellings is logged. Checkpoints at iteration boundaries; a resumed run repeats the same iterations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from .clustering import all_features, encoder, export_labels, load_features
from .loop import RunDir

# which clustering supervises each encoder: sources are 'v', 'a' or 'cat' (concatenated features)
TARGETS = {"sdc": {"v": ["v"], "a": ["a"]}, "xdc": {"v": ["a"], "a": ["v"]},
           "mdc": {"v": ["v", "a"], "a": ["a", "v"]}, "cdc": {"v": ["cat"], "a": ["cat"]}}


@dataclass
class XDCConfig:
    store: str
    out: str
    variant: str = "xdc"
    k: int = 64
    iterations: int = 10  # re-clusterings
    epochs: int = 1  # passes over the (cluster-balanced) data per iteration
    batch_size: int = 256
    lr: float = 0.05
    feat_dim: int = 512
    pca: int = 256  # PCA-whitening dims before k-means, as DeepCluster (0 = L2 only; small sets want few)
    seed: int = 1
    device: str = "cpu"
    resume: bool = False


def cluster(x: torch.Tensor, k: int, pca: int, seed: int) -> np.ndarray:
    """DeepCluster preprocessing (PCA with whitening, row L2) then k-means (empty clusters are relocated
    by scikit-learn)."""
    x = x.double().numpy()
    if pca:
        x = PCA(n_components=min(pca, *x.shape), whiten=True, random_state=seed).fit_transform(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=seed).fit_predict(x)


def balanced_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """DeepCluster's UnifLabelSampler: the same number of items from every non-empty cluster."""
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    per = -(-n // len(clusters))
    idx = np.concatenate([rng.choice(c, per, replace=len(c) < per) for c in clusters])
    return rng.permutation(idx)[:n]


def new_heads(targets: dict[str, list[str]], dim: int, k: int, generator: torch.Generator) -> nn.ModuleDict:
    heads = nn.ModuleDict()
    for m, sources in targets.items():
        for s in sources:
            head = nn.Linear(dim, k)
            with torch.no_grad():
                head.weight.normal_(0, 0.01, generator=generator)
                head.bias.zero_()
            heads[f"{m}_from_{s}"] = head
    return heads


def train(cfg: XDCConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    if cfg.variant not in TARGETS:
        raise ValueError(f"unknown variant {cfg.variant!r}; choose from {sorted(TARGETS)}")
    run = RunDir(cfg.out, cfg.resume)
    t0 = time.time()
    data = load_features(cfg.store)
    if len(data) < cfg.k:
        raise ValueError(f"{len(data)} clips cannot make {cfg.k} clusters; lower --k")
    torch.manual_seed(cfg.seed)
    encoders = nn.ModuleDict({"v": encoder(data.video.shape[1], cfg.feat_dim),
                              "a": encoder(data.audio.shape[1], cfg.feat_dim)}).to(cfg.device)
    opt = torch.optim.SGD(encoders.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-5)
    targets = TARGETS[cfg.variant]
    sources = sorted({s for ss in targets.values() for s in ss})
    labels: dict[str, np.ndarray] = {}
    start = 0
    if (state := run.load()) is not None:
        encoders.load_state_dict(state["encoders"])
        opt.load_state_dict(state["opt"])
        labels = {s: state[f"labels_{s}"].numpy() for s in sources}
        start = int(state["iteration"])
    run.open_log(start)
    run.write_config(cfg, method="xdc")
    print(f"xdc {cfg.variant}: {len(data)} clips, k={cfg.k}, targets {targets}, starting at iteration {start}")
    for it in tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not progress,
                   desc="iterations"):
        feats = all_features(encoders, data)
        feats["cat"] = torch.cat([feats["v"], feats["a"]], dim=1)
        new = {s: cluster(feats[s].cpu(), cfg.k, cfg.pca, cfg.seed * 1000 + it) for s in sources}
        nmi = {f"nmi_prev_{s}": float(normalized_mutual_info_score(labels[s], new[s])) for s in sources if s in labels}
        labels = new
        heads = new_heads(targets, cfg.feat_dim, cfg.k, torch.Generator().manual_seed(cfg.seed * 1000 + it))
        heads = heads.to(cfg.device)
        head_opt = torch.optim.SGD(heads.parameters(), lr=cfg.lr)
        y = {s: torch.from_numpy(labels[s]).long() for s in sources}
        first = targets["v"][0]
        rng = np.random.default_rng([cfg.seed, it])
        losses = []
        encoders.train()
        for _ in range(cfg.epochs):
            order = balanced_sample(labels[first], len(data), rng)
            for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                idx = torch.from_numpy(order[i:i + cfg.batch_size])
                z = {"v": encoders["v"](data.video[idx].to(cfg.device)), "a": encoders["a"](data.audio[idx].to(cfg.device))}
                loss = sum(F.cross_entropy(heads[f"{m}_from_{s}"](torch.relu(z[m])), y[s][idx].to(cfg.device))
                           for m, ss in targets.items() for s in ss)
                opt.zero_grad(set_to_none=True)
                head_opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                head_opt.step()
                losses.append(loss.item())
        run.log({"step": it, "loss": float(np.mean(losses)) if losses else None, **nmi,
                 **{f"clusters_{s}": int(len(np.unique(labels[s]))) for s in sources},
                 "time": round(time.time() - t0, 3)})
        run.save({"encoders": encoders.state_dict(), "opt": opt.state_dict(), "iteration": torch.tensor(it + 1),
                  **{f"labels_{s}": torch.from_numpy(labels[s]) for s in sources}})
    run.close()
    torch.save(encoders.state_dict(), run.path / "model.pt")
    results = export_labels(run.path, data, {f"cluster_{s}": labels[s] for s in sources})
    return {"iterations": cfg.iterations, "clips": len(data), "seconds": time.time() - t0, **results}
