"""`trainers xdc`: cross-modal deep clustering (Alwassel et al. 2020) and its SDC / MDC / CDC baselines.

Spec: shared/spec/mmv_xdc_selavi.md section 3 (DeepCluster's loop). Each iteration: encode every clip
(eval mode) -> PCA-whiten + L2 -> k-means (scikit-learn) per source -> fresh linear heads -> train the
encoders with cross-entropy on the pseudo-labels, sampling clusters uniformly. NMI between consecutive
labellings is logged. Checkpoints at each iteration's end and every --checkpoint-every steps inside it (an
iteration is an epoch of the whole dataset); a resumed run continues from the step it stopped at, to the same
weights.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from .clustering import ClipSet, encode, encode_chunks, export_labels, forward
from .data import default_workers
from .loop import InputWait, RunDir, check_finite
from .towers import VideoTowerOptions

# which clustering supervises each encoder: sources are 'v', 'a' or 'cat' (concatenated features)
TARGETS = {"sdc": {"v": ["v"], "a": ["a"]}, "xdc": {"v": ["a"], "a": ["v"]},
           "mdc": {"v": ["v", "a"], "a": ["a", "v"]}, "cdc": {"v": ["cat"], "a": ["cat"]}}


@dataclass
class XDCConfig(VideoTowerOptions):
    store: str  # the feature store to train on (`pipeline extract --store`)
    out: str  # run folder: config.json, checkpoint.pt, metrics.jsonl, model.pt
    # video groups, comma-separated: each max-pooled over the clip, L2-normalised, concatenated
    # (e.g. resnet152,r2plus1d_18)
    video_groups: str = "resnet152"
    variant: str = "xdc"  # xdc (each modality learns the other's clusters), sdc (its own), mdc (both), cdc (joint)
    k: int = 64  # k-means clusters per clustering (XDC: 64 to 1024, by dataset)
    iterations: int = 10  # re-clusterings, each followed by --epochs of training
    epochs: int = 1  # passes over the cluster-balanced data per iteration
    batch_size: int = 256  # clips per step (XDC: 256)
    lr: float = 0.05  # SGD learning rate, momentum 0.9, weight decay 1e-5 (DeepCluster: 0.05)
    feat_dim: int = 512  # encoder output size (the trainable encoder on each cached clip feature)
    pca: int = 256  # PCA-whitening dims before k-means, as DeepCluster (0 = L2 only; small sets want few)
    fit_points: int = 200_000  # PCA and k-means are fitted on at most this many clips, then every clip is assigned
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second
    seed: int = 1  # batches and initialisation are a function of the seed
    device: str = "cpu"  # cpu or cuda[:N]
    resume: bool = False  # continue the run in --out from its last checkpoint, to the same result
    checkpoint_every: int = 500  # steps between checkpoints inside an iteration, 0: none (one is saved at its end)
    loader_workers: int = default_workers()  # processes forming batches beside training (0: in-process)


def fit_cluster(x: torch.Tensor, k: int, pca: int, seed: int):
    """DeepCluster preprocessing (PCA with whitening, row L2) then k-means (empty clusters are relocated
    by scikit-learn). Returns (labels of x, assign: features -> labels with the same PCA and centroids)."""
    x = x.double().numpy()
    p = PCA(n_components=min(pca, *x.shape), whiten=True, random_state=seed) if pca else None

    def l2(z):
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    km = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=seed).fit(l2(p.fit_transform(x) if p else x))

    def assign(z: torch.Tensor) -> np.ndarray:
        z = z.double().numpy()
        return km.predict(l2(p.transform(z) if p else z))
    return km.labels_, assign


def cluster(x: torch.Tensor, k: int, pca: int, seed: int) -> np.ndarray:
    return fit_cluster(x, k, pca, seed)[0]


def relabel(encoders: nn.ModuleDict, clips: ClipSet, sources: list[str], cfg: XDCConfig, it: int) -> dict:
    """One clustering of every clip per source: fit on all clips, or on a random ``fit_points`` of them
    (faiss's k-means samples too) and assign the rest a chunk at a time. RAM: the fitted clips' features."""
    n = len(clips)
    fit = np.arange(n) if n <= cfg.fit_points else np.sort(
        np.random.default_rng([cfg.seed, it, 2]).choice(n, cfg.fit_points, replace=False))
    feats = encode(encoders, clips, fit, cfg.device)
    feats["cat"] = torch.cat([feats["v"], feats["a"]], dim=1)
    fitted = {s: fit_cluster(feats[s], cfg.k, cfg.pca, cfg.seed * 1000 + it) for s in sources}
    if len(fit) == n:
        return {s: f[0] for s, f in fitted.items()}
    labels = {s: np.empty(n, np.int64) for s in sources}
    for pos, z in encode_chunks(encoders, clips, None, cfg.device):
        z["cat"] = torch.cat([z["v"], z["a"]], dim=1)
        for s in sources:
            labels[s][pos] = fitted[s][1](z[s])
    return labels


def balanced_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """DeepCluster's UnifLabelSampler: the same number of items from every non-empty cluster."""
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    per = -(-n // len(clusters))
    idx = np.concatenate([rng.choice(c, per, replace=len(c) < per) for c in clusters])
    return rng.permutation(idx)[:n]


def saved(encoders: nn.Module, opt, labels: dict[str, np.ndarray], iteration: int) -> dict:
    """A checkpoint's common part: at an iteration's end ``iteration`` is the next one to run."""
    return {"encoders": encoders.state_dict(), "opt": opt.state_dict(), "iteration": torch.tensor(iteration),
            **{f"labels_{s}": torch.from_numpy(v) for s, v in labels.items()}}


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
    run = RunDir(cfg)
    t0 = time.time()
    clips = ClipSet(cfg)
    n = len(clips)
    if n < cfg.k:
        raise ValueError(f"{n} clips cannot make {cfg.k} clusters; lower --k")
    torch.manual_seed(cfg.seed)
    encoders = clips.encoders(cfg.feat_dim).to(cfg.device)
    opt = torch.optim.SGD(encoders.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-5, fused=True)
    targets = TARGETS[cfg.variant]
    sources = sorted({s for ss in targets.values() for s in ss})
    labels: dict[str, np.ndarray] = {}
    start, state = 0, run.load()
    inside = state is not None and "done" in state  # the checkpoint was saved inside iteration ``start``
    if state is not None:
        encoders.load_state_dict(state["encoders"])
        opt.load_state_dict(state["opt"])
        labels = {s: state[f"labels_{s}"].numpy() for s in sources}
        start = int(state["iteration"])
    run.open_log(start)
    run.write_config(cfg, method="xdc", video_dim=clips.video_dim, audio_dim=clips.audio_dim)
    print(f"xdc {cfg.variant}: {n} clips, k={cfg.k}, targets {targets}, starting at iteration {start}"
          + (f", step {int(state['done'])} of it" if inside else ""))
    wait = InputWait()
    for it in tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not progress,
                   desc="iterations"):
        heads = new_heads(targets, cfg.feat_dim, cfg.k, torch.Generator().manual_seed(cfg.seed * 1000 + it))
        heads = heads.to(cfg.device)
        head_opt = torch.optim.SGD(heads.parameters(), lr=cfg.lr, fused=True)
        if it == start and inside:
            heads.load_state_dict(state["heads"])
            head_opt.load_state_dict(state["head_opt"])
            done, losses, nmi = int(state["done"]), state["losses"].tolist(), json.loads(state["nmi"])
        else:
            new = relabel(encoders, clips, sources, cfg, it)
            nmi = {f"nmi_prev_{s}": float(normalized_mutual_info_score(labels[s], new[s]))
                   for s in sources if s in labels}
            labels, done, losses = new, 0, []
        y = {s: torch.from_numpy(labels[s]).long() for s in sources}
        first = targets["v"][0]
        rng = np.random.default_rng([cfg.seed, it])
        per_epoch = n // cfg.batch_size
        encoders.train()
        for epoch in range(cfg.epochs):
            order = balanced_sample(labels[first], n, rng)  # drawn for every epoch: a resume draws the same
            begin = max(0, done - epoch * per_epoch)
            if begin >= per_epoch:
                continue
            batches = clips.loader(order, cfg.batch_size, cfg.loader_workers, begin)
            for i, b in zip(range(begin, per_epoch), wait.wrap(batches)):
                idx = torch.from_numpy(order[i * cfg.batch_size:(i + 1) * cfg.batch_size])
                z = forward(encoders, b, cfg.device)
                loss = sum(F.cross_entropy(heads[f"{m}_from_{s}"](torch.relu(z[m])), y[s][idx].to(cfg.device))
                           for m, ss in targets.items() for s in ss)
                check_finite(loss, it, cfg.store)
                opt.zero_grad(set_to_none=True)
                head_opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                head_opt.step()
                losses.append(loss.item())
                done += 1
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.epochs * per_epoch:
                    run.save({**saved(encoders, opt, labels, it), "done": torch.tensor(done),
                              "heads": heads.state_dict(), "head_opt": head_opt.state_dict(),
                              "losses": torch.tensor(losses, dtype=torch.float64), "nmi": json.dumps(nmi)})
        run.log({"step": it, "loss": float(np.mean(losses)) if losses else None, **nmi,
                 **{f"clusters_{s}": int(len(np.unique(labels[s]))) for s in sources},
                 "input_wait": wait.share(), "time": round(time.time() - t0, 3)})
        run.save(saved(encoders, opt, labels, it + 1))
    run.close()
    torch.save(encoders.state_dict(), run.path / "model.pt")
    results = export_labels(run.path, clips, {f"cluster_{s}": labels[s] for s in sources})
    return {"iterations": cfg.iterations, "clips": n, "seconds": time.time() - t0, **results}
