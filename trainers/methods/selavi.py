"""`trainers selavi`: labelling videos from scratch (Asano, Patrick et al. 2020) over the cache.

Spec: shared/spec/mmv_xdc_selavi.md section 4. Several heads per modality; on a t^1.5 schedule every clip
gets a pseudo-label per head from Sinkhorn-Knopp on (p_v * p_a)^(lambda/2) with uniform or Gaussian
cluster-size priors; at the first update the audio head is aligned to the video head (exact Hungarian
matching); both modalities are trained on the *same* label (modality splicing): 1/2 CE_v + 1/2 CE_a.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clustering import ClipSet, PseudoLabelMethod, encode, export_labels, forward
from ..loader import step_loader
from ..losses import sinkhorn_labels
from ..method import TrainConfig
from ..towers import VideoTowerOptions
from . import register


@dataclass
class SeLaViConfig(TrainConfig, VideoTowerOptions):
    heads: int = 10  # clustering heads, each with its own labels (SeLaVi: 10)
    clusters: int = 32  # clusters K per head (SeLaVi: the dataset's class count, e.g. 309 for VGG-Sound)
    lam: float = 20.0  # Sinkhorn-Knopp lambda: sharpness of the optimal-transport labels (SeLaVi: 20)
    epochs: int = 20  # passes over the clips (SeLaVi: 200)
    steps: int = 0  # optimiser steps of the run (0: --epochs passes over the clips)
    batch_size: int = 256  # clips per step (SeLaVi: 1024 over 64 GPUs)
    lr: float = 1e-2  # SGD learning rate, momentum 0.9, weight decay 1e-5 (SeLaVi: 0.01 per 16-clip GPU batch)
    label_updates: int = 100  # Sinkhorn-Knopp relabellings over the run, dense early (SeLaVi: 100)
    schedule_power: float = 1.5  # relabel at step total * t^power for t in [0, 1] (SeLaVi: 1.5)
    distribution: Literal["uniform", "gauss"] = "uniform"  # cluster-size prior: uniform or gauss (SeLaVi's best: gauss)
    gauss_sd: float = 0.1  # relative spread of the gauss cluster sizes (SeLaVi: 0.1)
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second
    # end-to-end audio in training: each clip's log-mel shifted by a gain drawn from U(-g, g) dB (SeLaVi's
    # volume jitter x U(0.9, 1.1): 0.9; learn_speech uses 20, as loudness tells its speakers apart)
    audio_gain_db: float = 0.9
    compat_marginals: bool = False  # reproduce the released code's r ~ 1/d (see spec 4.5)
    # batches run through the model in training mode, without updates, before the first labelling, so that
    # BatchNorm's running statistics (used by the eval-mode label pass) are the data's, averaged with equal
    # weights (SeLaVi's released main.py: 20, warmup_batchnorm at the first epoch, with BatchNorm's momentum 0.1;
    # our default 0 differs: on the planted-class test it lowered the best head's NMI, docs/training.md)
    bn_warmup: int = 0
    # average = every BatchNorm's statistics reset and averaged over the warm-up batches with equal weights (ours);
    # released = BatchNorm's own momentum 0.1 from the statistics at init, as SeLaVi's warmup_batchnorm
    # (after 20 batches 0.9^20 = 12% of the init statistics remain)
    bn_warmup_mode: Literal["average", "released"] = "average"
    align: Literal["hungarian", "none"] = "hungarian"  # audio head aligned to the video head at the first update: hungarian (exact) or none
    # heads split, in an order shuffled at each labelling, into this many groups, each labelled from its own pass
    # over the clips with fresh training augmentations (SeLaVi's ind_groups: 2 in its README run); 1: one pass,
    # without augmentation
    head_groups: int = 1
    dim: int = 512  # encoder output size (SeLaVi: 512)
    dropout: float = 0.3  # dropout in the heads (SeLaVi: 0.3)


def mlp_head(dim: int, k: int, dropout: float) -> nn.Sequential:
    """SeLaVi's MLPv2."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(dim, k))


def update_steps(total: int, n: int, power: float) -> set[int]:
    """Label updates at total * t^power for t on linspace(0, 1, n): dense early, first at step 0."""
    return {int(total * t ** power) for t in np.linspace(0, 1, n)}


def hungarian_alignment(p_v: torch.Tensor, p_a: torch.Tensor, log: bool = False,
                        chunk: int = 1 << 15) -> np.ndarray:
    """Permutation pi minimising sum_ik |p_v[i,k] - p_a[i,pi(k)]| exactly (the objective splits over
    column pairs: C_kl = sum_i |p_v[i,k] - p_a[i,l]|, summed here ``chunk`` rows at a time).
    ``log``: the inputs are log-probabilities."""
    def rows(p, i):
        x = p[i:i + chunk].double()
        return (x.exp() if log else x).t()
    from scipy.optimize import linear_sum_assignment

    cost = sum(torch.cdist(rows(p_v, i), rows(p_a, i), p=1) for i in range(0, len(p_v), chunk))
    _, perm = linear_sum_assignment(cost.numpy())
    return perm


def marginals(sizes: np.ndarray | None, mass: torch.Tensor, compat: bool) -> torch.Tensor | None:
    """Column marginals from sampled cluster sizes, matched by rank to the current cluster masses:
    the cluster holding the most mass gets the largest size (r ~ d), or r ~ 1/d with ``compat``."""
    if sizes is None:
        return None
    d = np.empty_like(sizes)
    d[np.argsort(mass.numpy())] = np.sort(sizes)
    r = 1 / d if compat else d
    return torch.from_numpy(r / r.sum())


class SeLaVi(nn.Module):
    def __init__(self, clips: ClipSet, cfg: SeLaViConfig):
        super().__init__()
        self.encoders = clips.encoders(cfg.dim)
        self.heads = nn.ModuleDict({m: nn.ModuleList([mlp_head(cfg.dim, cfg.clusters, cfg.dropout)
                                                      for _ in range(cfg.heads)]) for m in "va"})

    @torch.no_grad()
    def head_log_probs(self, feats: dict[str, torch.Tensor], h: int, chunk: int = 1 << 16) -> dict[str, torch.Tensor]:
        """log p (N, K) float64 in RAM of head h per modality, eval mode, from encoder outputs ``feats`` (in RAM;
        each chunk goes through the head on the model's device)."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = {}
        for m, x in feats.items():
            out[m] = torch.empty(len(x), self.heads[m][h][-1].out_features, dtype=torch.float64)
            for i in range(0, len(x), chunk):
                z = torch.relu(x[i:i + chunk].to(dev).float())
                out[m][i:i + chunk] = F.log_softmax(self.heads[m][h](z).double(), 1).cpu()
        self.train(was)
        return out


class SeLaViSampler:
    """Step -> clip indices: this epoch's permutation of the N clips, batch_size at a time."""

    def __init__(self, clips: np.ndarray, batch_size: int, seed: int):
        self.clips, self.size, self.seed = clips, batch_size, seed
        self.steps_per_epoch = len(clips) // batch_size
        self._epoch, self._perm = None, None

    def positions(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))
        return self._perm[k * self.size:(k + 1) * self.size]

    def __call__(self, reader, step: int) -> np.ndarray:
        return self.clips[self.positions(step)]


@torch.no_grad()
def warm_up_batchnorm(model: SeLaVi, batches, device, mode: str = "average") -> None:
    """Forward ``batches`` through the encoders and every head in training mode, every BatchNorm averaging
    their statistics with equal weights (momentum None): the running statistics become the data's, not
    (0, 1) (SeLaVi's warmup_batchnorm; with the usual momentum 0.1, 20 batches keep 12% of the (0, 1)).
    Without it the first, eval-mode label pass sees the statistics at init: on learn_speech the video
    encoder's outputs had std 0.03 and the audio's 3.1 (DAVEnet's input BatchNorm passing raw dB), so the
    first labels were the audio's."""
    norms = [bn for bn in model.modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms if mode == "average" else ():  # released: BatchNorm's own momentum, from its current stats
        bn.reset_running_stats()
        bn.momentum = None
    for b in batches:
        z = forward(model.encoders, b, device)
        for m, heads in model.heads.items():
            for head in heads:
                head(torch.relu(z[m]))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


def features(model: SeLaVi, clips: ClipSet, cfg: SeLaViConfig, rng: np.random.Generator | None = None
             ) -> dict[str, torch.Tensor]:
    """Every clip's encoder outputs (``rng``: under training augmentations); float16 once float32 would pass
    4 GB (1M clips at 512-d: 4 GB)."""
    big = len(clips) * cfg.dim * 2 * 4 > 4 << 30
    return encode(model.encoders, clips, device=cfg.device, dtype=torch.float16 if big else torch.float32, rng=rng)


def head_groups(heads: int, groups: int, seed: int, step: int) -> list[np.ndarray]:
    """SeLaVi's decorrelated heads: the head order shuffled (a function of seed and step), then split into
    ``groups`` as order[g::groups]; one group: every head, in order."""
    if groups == 1:
        return [np.arange(heads)]
    order = np.random.default_rng([seed, 11, step]).permutation(heads)
    return [order[g::groups] for g in range(groups)]


@register
class SeLaViMethod(PseudoLabelMethod):
    name, Config = "selavi", SeLaViConfig
    # the released README / scripts/master.sh run (facebookresearch/selavi 33d2b2d): 10 heads, Gaussian marginals,
    # modality alignment, 200 epochs of 64 GPUs x 16 clips, lr 0.01, BatchNorm warm-up of 20 batches. Left ours, as
    # plain bugs: --compat-marginals (the inverted r ~ 1/d). K is the dataset's: give --clusters (docs/fidelity.md)
    paper = dict(heads=10, lam=20.0, epochs=200, batch_size=1024, lr=1e-2, label_updates=100, schedule_power=1.5,
                 distribution="gauss", gauss_sd=0.1, audio_gain_db=0.9, bn_warmup=20, bn_warmup_mode="released",
                 align="hungarian", head_groups=2, dim=512, dropout=0.3)
    help = "SeLaVi: Sinkhorn-Knopp pseudo-labels shared by video and audio, several heads"

    def setup(self) -> dict:
        cfg = self.cfg
        self.clips = clips = ClipSet(cfg)
        self.spec, n = clips.spec, len(clips)
        if n < max(cfg.batch_size, cfg.clusters):
            raise ValueError(f"{n} clips: lower --batch-size / --clusters")
        if not 1 <= cfg.head_groups <= cfg.heads:
            raise ValueError(f"--head-groups {cfg.head_groups}: give 1 to --heads {cfg.heads}")
        self.model = SeLaVi(clips, cfg).to(cfg.device)
        self.optimizers = [torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-5,
                                           fused=True)]
        self._sampler = SeLaViSampler(clips.clips, cfg.batch_size, cfg.seed)
        self.steps = cfg.steps or cfg.epochs * self._sampler.steps_per_epoch
        self.updates = update_steps(self.steps, cfg.label_updates, cfg.schedule_power)
        rng_sizes = np.random.default_rng([cfg.seed, 7])
        self.sizes = [np.maximum(1.0, (1 + cfg.gauss_sd * rng_sizes.normal(size=cfg.clusters)) * n / cfg.clusters)
                      if cfg.distribution == "gauss" else None for _ in range(cfg.heads)]  # one sample per head, kept
        self.labels = torch.zeros(cfg.heads, n, dtype=torch.long)
        self.aligned = False
        return {"video_dim": clips.video_dim, "audio_dim": clips.audio_dim}

    def describe(self, step: int) -> str:
        cfg = self.cfg
        return (f"selavi: {len(self.clips)} clips, {cfg.heads} heads, k={cfg.clusters}, {self.steps} steps, "
                f"{len(self.updates)} label updates, {cfg.distribution} marginals, starting at step {step}")

    def sampler(self, step: int):
        return self._sampler, self.steps

    def schedule(self, step: int) -> dict:
        cfg = self.cfg
        if step == 0 and cfg.bn_warmup:
            warm_up_batchnorm(self.model, step_loader(cfg.store, self.spec, self._sampler, 0,
                                                      min(cfg.bn_warmup, self.steps), 0), cfg.device,
                              cfg.bn_warmup_mode)
        if step in self.updates:
            return self.relabel(step)
        return {}

    def relabel(self, step: int = 0) -> dict:
        """Sinkhorn-Knopp labels for every clip, one head at a time (RAM: the features and one head's N x K);
        with --head-groups G, each group of heads from its own augmented pass over the clips."""
        cfg, model = self.cfg, self.model
        old = self.labels.clone()
        iters = []
        for g, group in enumerate(head_groups(cfg.heads, cfg.head_groups, cfg.seed, step)):
            rng = np.random.default_rng([cfg.seed, 12, step, g]) if cfg.head_groups > 1 else None
            iters += self.label_heads(features(model, self.clips, cfg, rng), group)
        self.aligned = True
        from sklearn.metrics import normalized_mutual_info_score

        return {"nmi_prev": float(np.mean([normalized_mutual_info_score(old[h], self.labels[h])
                                           for h in range(cfg.heads)])),
                "sk_iterations": float(np.mean(iters)),
                "clusters_used": float(np.mean([len(torch.unique(self.labels[h])) for h in range(cfg.heads)]))}

    def label_heads(self, feats: dict[str, torch.Tensor], heads) -> list[int]:
        """New labels of ``heads`` from encoder outputs ``feats``; the Sinkhorn-Knopp iterations of each."""
        cfg, model, n = self.cfg, self.model, len(self.clips)
        iters = []
        for h in (int(h) for h in heads):
            logp = model.head_log_probs(feats, h)
            if not self.aligned and cfg.align == "hungarian":
                perm = hungarian_alignment(logp["v"], logp["a"], log=True)
                last = model.heads["a"][h][-1]
                with torch.no_grad():  # output k of the audio head now predicts what its output perm[k] did
                    last.weight.copy_(last.weight[perm])
                    last.bias.copy_(last.bias[perm])
                logp["a"] = logp["a"][:, perm]
            joint = logp["v"].add_(logp["a"]).div_(2)  # in place: RAM holds one N x K at a time
            del logp
            mass = sum(torch.exp(cfg.lam * joint[i:i + (1 << 16)]).sum(0) for i in range(0, n, 1 << 16))
            r = marginals(self.sizes[h], mass, cfg.compat_marginals)
            self.labels[h], it = sinkhorn_labels(joint, cfg.lam, r)
            iters.append(it)
            del joint
        return iters

    def forward(self, b: dict, step: int):
        return forward(self.model.encoders, b, self.cfg.device)

    def loss(self, z, b: dict, step: int) -> dict:
        y = self.labels[:, torch.from_numpy(self._sampler.positions(step))].to(self.cfg.device)
        ce = {m: torch.stack([F.cross_entropy(head(torch.relu(z[m])), y[h])
                              for h, head in enumerate(self.model.heads[m])]).mean() for m in "va"}
        return {"loss": 0.5 * ce["v"] + 0.5 * ce["a"], "ce_v": ce["v"], "ce_a": ce["a"]}

    def state_dict(self) -> dict:
        return {"labels": self.labels, "aligned": torch.tensor(self.aligned)}

    def load_state_dict(self, state: dict) -> None:
        self.labels, self.aligned = state["labels"], bool(state["aligned"])

    def finish(self, run) -> dict:
        """Test-time clusters: argmax of p_v * p_a per head, no Sinkhorn (SeLaVi's get_clusters)."""
        feats = features(self.model, self.clips, self.cfg)
        predicted = {}
        for h in range(self.cfg.heads):
            logp = self.model.head_log_probs(feats, h)
            predicted[f"head{h}"] = logp["v"].add_(logp["a"]).argmax(1).numpy()
        pseudo = {f"pseudo_head{h}": self.labels[h].numpy() for h in range(self.cfg.heads)}
        return {"clips": len(self.clips), **export_labels(run, self.clips, {**predicted, **pseudo}, best_of="head")}

    @classmethod
    def encoder_state(cls, state: dict) -> dict:
        """model.pt holds the whole model: the encoders and the clustering heads."""
        return {k.removeprefix("encoders."): v for k, v in state.items() if k.startswith("encoders.")}
