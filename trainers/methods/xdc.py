"""`trainers xdc`: cross-modal deep clustering (Alwassel et al. 2020) and its SDC / MDC / CDC baselines.

Spec: shared/spec/mmv_xdc_selavi.md section 3 (DeepCluster's loop). Each iteration: encode every clip
(eval mode) -> PCA-whiten + L2 -> k-means (scikit-learn) per source -> fresh linear heads -> train the
encoders with cross-entropy on the pseudo-labels, sampling clusters uniformly. NMI between consecutive
labellings is logged. An iteration is --epochs passes over the clips, counted in steps like every method's
run (trainers/train.py): a checkpoint at each iteration's end and every --checkpoint-every steps inside it, and
a resumed run continues from the step it stopped at, to the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clustering import ClipSet, PseudoLabelMethod, encode, encode_chunks, export_labels, forward
from ..method import TrainConfig
from ..towers import VideoTowerOptions
from . import register

# which clustering supervises each encoder: sources are 'v', 'a' or 'cat' (concatenated features)
TARGETS = {"sdc": {"v": ["v"], "a": ["a"]}, "xdc": {"v": ["a"], "a": ["v"]},
           "mdc": {"v": ["v", "a"], "a": ["a", "v"]}, "cdc": {"v": ["cat"], "a": ["cat"]}}


@dataclass
class XDCConfig(TrainConfig, VideoTowerOptions):
    variant: Literal["xdc", "sdc", "mdc", "cdc"] = "xdc"  # xdc (each modality learns the other's clusters), sdc (its own), mdc (both), cdc (joint)
    clusters: int = 64  # k-means clusters K per clustering (XDC: 64 to 1024, by dataset)
    iterations: int = 10  # re-clusterings, each followed by an equal share of the run's steps
    epochs: int = 1  # passes over the cluster-balanced data per iteration (unless --steps is given)
    # optimiser steps of the whole run, split into --iterations equal parts (0: --epochs passes per iteration;
    # XDC trains each iteration until a held-out loss stops falling: --held-out)
    steps: int = 0
    # share of the clips kept out of training: after each epoch the heads' loss on them is measured, and an
    # iteration ends once it has not fallen for --patience epochs, or after --epochs (XDC's rule); 0: off
    held_out: float = 0.0
    patience: int = 1  # with --held-out: epochs without a lower held-out loss that end an iteration
    batch_size: int = 256  # clips per step, an equal slice per labelling, each balanced over its clusters (XDC: 256)
    lr: float = 0.05  # SGD learning rate, momentum 0.9, weight decay 1e-5 (DeepCluster: 0.05)
    dim: int = 512  # encoder output size (the trainable encoder on each cached clip feature)
    pca: int = 256  # PCA-whitening dims before k-means, as DeepCluster (0 = L2 only; small sets want few)
    fit_points: int = 200_000  # PCA and k-means are fitted on at most this many clips, then every clip is assigned
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second


def fit_cluster(x: torch.Tensor, k: int, pca: int, seed: int):
    """DeepCluster preprocessing (PCA with whitening, row L2) then k-means (empty clusters are relocated
    by scikit-learn). Returns (labels of x, assign: features -> labels with the same PCA and centroids)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

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
    fitted = {s: fit_cluster(feats[s], cfg.clusters, cfg.pca, cfg.seed * 1000 + it) for s in sources}
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


class XDCSampler:
    """The steps of one iteration: each step's batch holds an equal slice per labelling (source), each slice
    drawn in DeepCluster's cluster-balanced order of *its own* labelling, so every target a head learns is
    balanced (XDC: the video head's audio clusters and the audio head's video clusters alike). An epoch reads
    as many clips as there are. A pure function of (seed, iteration, labels, step)."""

    def __init__(self, clips: np.ndarray, labels: dict[str, np.ndarray], it: int, epochs: int, size: int,
                 seed: int, first: int):
        rng = np.random.default_rng([seed, it])
        self.labels = labels  # positions index these
        self.sources = sorted(labels)
        self.share = size // len(self.sources)
        self.orders = [{s: balanced_sample(labels[s], len(clips), rng) for s in self.sources} for _ in range(epochs)]
        self.clips, self.first, self.per_epoch = clips, first, len(clips) // size

    def positions(self, step: int) -> np.ndarray:
        epoch, i = divmod(step - self.first, self.per_epoch)
        return np.concatenate([self.orders[epoch][s][i * self.share:(i + 1) * self.share] for s in self.sources])

    def rows(self, source: str) -> slice:
        """The batch rows drawn balanced over ``source``'s clusters: the rows its heads learn from."""
        k = self.sources.index(source)
        return slice(k * self.share, (k + 1) * self.share)

    def __call__(self, reader, step: int) -> np.ndarray:
        return self.clips[self.positions(step)]


@register
class XDCMethod(PseudoLabelMethod):
    name, Config = "xdc", XDCConfig
    # XDC's training code is unreleased; its clustering loop is DeepCluster's, as its author says (spec
    # mmv_xdc_selavi.md 3.3): SGD lr 0.05, batch 256, PCA-256 whitening. K is the dataset's: give --clusters
    paper = dict(variant="xdc", batch_size=256, lr=0.05, pca=256)
    help = "XDC / MDC / CDC / SDC: k-means pseudo-labels from one modality supervise the other"

    def setup(self) -> dict:
        cfg = self.cfg
        self.clips = clips = ClipSet(cfg)
        self.spec, n = clips.spec, len(clips)
        if n < cfg.clusters:
            raise ValueError(f"{n} clips cannot make {cfg.clusters} clusters; lower --clusters")
        if n < cfg.batch_size:
            raise ValueError(f"{n} clips but --batch-size {cfg.batch_size}; lower it")
        self.model = clips.encoders(cfg.dim).to(cfg.device)
        self.encoder_opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-5,
                                           fused=True)
        self.optimizers = [self.encoder_opt]
        self.targets = TARGETS[cfg.variant]
        self.sources = sorted({s for ss in self.targets.values() for s in ss})
        held = cfg.held_out > 0
        if held and cfg.steps:
            raise ValueError("--held-out ends each iteration on its held-out loss: give --epochs (its longest), "
                             "not --steps")
        if not 0 <= cfg.held_out < 1:
            raise ValueError(f"--held-out {cfg.held_out}: a share of the clips, 0 <= x < 1")
        n_held = int(round(cfg.held_out * n)) if held else 0
        if held and not 1 <= n_held <= n - cfg.batch_size:
            raise ValueError(f"--held-out {cfg.held_out} of {n} clips keeps {n_held} out: need at least one, and "
                             f"--batch-size {cfg.batch_size} left to train on")
        order = np.random.default_rng([cfg.seed, 5]).permutation(n)
        self.held = np.sort(order[:n_held])
        self.train_pos = np.sort(order[n_held:]) if held else np.arange(n)
        self.per_epoch = len(self.train_pos) // cfg.batch_size
        self.iteration_steps = cfg.steps // cfg.iterations if cfg.steps else cfg.epochs * self.per_epoch
        if self.iteration_steps < 1:
            raise ValueError(f"--steps {cfg.steps} cannot make --iterations {cfg.iterations}; raise it")
        self.steps = cfg.iterations * self.iteration_steps  # with --held-out, the longest: iterations may end early
        self.labels: dict[str, np.ndarray] = {}
        self.iteration, self._sampler = -1, None
        self.start, self.epochs_done, self.best, self.bad = 0, 0, float("inf"), 0  # the iteration under way
        return {"video_dim": clips.video_dim, "audio_dim": clips.audio_dim}

    def describe(self, step: int) -> str:
        return (f"xdc {self.cfg.variant}: {len(self.clips)} clips, k={self.cfg.clusters}, targets {self.targets}, "
                f"{self.cfg.iterations} iterations of {self.iteration_steps} steps, starting at step {step}")

    def new_heads(self, it: int) -> None:
        """Fresh linear heads for iteration ``it`` (DeepCluster), with their own optimiser."""
        cfg = self.cfg
        self.heads = new_heads(self.targets, cfg.dim, cfg.clusters,
                               torch.Generator().manual_seed(cfg.seed * 1000 + it)).to(cfg.device)
        self.optimizers = [self.encoder_opt, torch.optim.SGD(self.heads.parameters(), lr=cfg.lr, fused=True)]
        self.iteration = it

    def schedule(self, step: int) -> dict:
        if self.cfg.held_out:
            return self._held_out_schedule(step)
        if step % self.iteration_steps:
            return {}
        return self._relabel(step, step // self.iteration_steps)

    def _relabel(self, step: int, it: int) -> dict:
        """Iteration ``it`` starts at ``step``: new heads, new labels of every clip (held-out ones included)."""
        self.new_heads(it)
        self.start, self.epochs_done, self.best, self.bad = step, 0, float("inf"), 0
        self._longest()
        new = relabel(self.model, self.clips, self.sources, self.cfg, self.iteration)
        from sklearn.metrics import normalized_mutual_info_score

        record = {f"nmi_prev_{s}": float(normalized_mutual_info_score(self.labels[s], new[s]))
                  for s in self.sources if s in self.labels}
        self.labels = new
        return {**record, **{f"clusters_{s}": int(len(np.unique(new[s]))) for s in self.sources}}

    def _held_out_schedule(self, step: int) -> dict:
        """At each epoch's end, the heads' loss on the held-out clips; an iteration ends once it has not fallen
        for --patience epochs or after --epochs, and the run once --iterations have ended."""
        if self.iteration < 0:
            return self._relabel(step, 0)
        if step == self.start or (step - self.start) % self.per_epoch:
            return {}
        loss = self.held_out_loss()
        self.epochs_done += 1
        if loss < self.best - 1e-9:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        record = {"held_out_loss": loss, "iteration_epochs": self.epochs_done}
        if self.bad < self.cfg.patience and self.epochs_done < self.cfg.epochs:
            return record
        if self.iteration + 1 == self.cfg.iterations:
            self.steps = step  # the last iteration has ended: so has the run
            return record
        return {**record, **self._relabel(step, self.iteration + 1)}

    def _longest(self) -> None:
        """With --held-out, the run's length if every iteration left runs to --epochs (the current one started at
        ``self.start``); without, fixed."""
        if self.cfg.held_out:
            self.steps = self.start + (self.cfg.iterations - self.iteration) * self.iteration_steps

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """The heads' cross-entropy on the held-out clips' current labels (eval mode, no augmentation)."""
        was = self.heads.training
        self.heads.eval()
        z = encode(self.model, self.clips, self.held, self.cfg.device)
        loss = sum(F.cross_entropy(self.heads[f"{m}_from_{s}"](torch.relu(z[m].to(self.cfg.device))),
                                   torch.from_numpy(self.labels[s][self.held]).long().to(self.cfg.device))
                   for m, ss in self.targets.items() for s in ss)
        self.heads.train(was)
        return float(loss)

    def sampler(self, step: int):
        cfg = self.cfg
        if cfg.held_out:  # a segment per epoch: the next epoch's end may end the iteration
            first, it, epochs = self.start, self.iteration, cfg.epochs
            end = step + self.per_epoch - (step - first) % self.per_epoch
        else:
            it = step // self.iteration_steps
            first = it * self.iteration_steps
            epochs = -(-self.iteration_steps // self.per_epoch)
            end = first + self.iteration_steps
        labels = {s: v[self.train_pos] for s, v in self.labels.items()}
        self._sampler = XDCSampler(self.clips.clips[self.train_pos], labels, it, epochs, cfg.batch_size, cfg.seed,
                                   first)
        return self._sampler, end

    def forward(self, b: dict, step: int):
        return forward(self.model, b, self.cfg.device)

    def loss(self, z, b: dict, step: int) -> dict:
        idx, rows, labels = self._sampler.positions(step), self._sampler.rows, self._sampler.labels
        loss = sum(F.cross_entropy(self.heads[f"{m}_from_{s}"](torch.relu(z[m][rows(s)])),
                                   torch.from_numpy(labels[s][idx[rows(s)]]).long().to(self.cfg.device))
                   for m, ss in self.targets.items() for s in ss)
        return {"loss": loss}

    def checkpoint_due(self, step: int) -> bool:
        if self.cfg.held_out:  # each epoch's end, where the held-out loss decides
            return (step + 1 - self.start) % self.per_epoch == 0
        return (step + 1) % self.iteration_steps == 0

    def state_dict(self) -> dict:
        return {"iteration": torch.tensor(self.iteration), "heads": self.heads.state_dict(),
                "held_out": torch.tensor([self.start, self.epochs_done, self.bad], dtype=torch.int64),
                "best": torch.tensor(self.best, dtype=torch.float64),
                **{f"labels_{s}": torch.from_numpy(v) for s, v in self.labels.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.new_heads(int(state["iteration"]))
        self.heads.load_state_dict(state["heads"])
        self.labels = {s: state[f"labels_{s}"].numpy() for s in self.sources}
        if "held_out" in state:
            self.start, self.epochs_done, self.bad = (int(x) for x in state["held_out"])
            self.best = float(state["best"])
            self._longest()  # --iterations may have grown since: the decisions are remade from here

    def finish(self, run) -> dict:
        labels = {f"cluster_{s}": self.labels[s] for s in self.sources}
        return {"iterations": self.cfg.iterations, "clips": len(self.clips), "steps": self.steps,
                **export_labels(run, self.clips, labels)}
