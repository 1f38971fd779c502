"""`trainers selavi`: labelling videos from scratch (Asano, Patrick et al. 2020) over the cache.

Spec: shared/spec/mmv_xdc_selavi.md section 4. Several heads per modality; on a t^1.5 schedule every clip
gets a pseudo-label per head from Sinkhorn-Knopp on (p_v * p_a)^(lambda/2) with uniform or Gaussian
cluster-size priors; at the first update the audio head is aligned to the video head (exact Hungarian
matching); both modalities are trained on the *same* label (modality splicing): 1/2 CE_v + 1/2 CE_a.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from .clustering import ClipSet, encode, export_labels, forward
from .data import default_workers, step_loader
from .loop import InputWait, RunDir, check_finite
from .losses import sinkhorn_labels
from .towers import VideoTowerOptions


@dataclass
class SeLaViConfig(VideoTowerOptions):
    store: str  # the feature store to train on (`pipeline extract --store`)
    out: str  # run folder: config.json, checkpoint.pt, metrics.jsonl, model.pt
    # video groups, comma-separated: each max-pooled over the clip, L2-normalised, concatenated
    # (e.g. resnet152,r2plus1d_18)
    video_groups: str = "resnet152"
    heads: int = 10  # clustering heads, each with its own labels (SeLaVi: 10)
    k: int = 32  # clusters per head (SeLaVi: the dataset's class count, e.g. 309 for VGG-Sound)
    lam: float = 20.0  # Sinkhorn-Knopp lambda: sharpness of the optimal-transport labels (SeLaVi: 20)
    epochs: int = 20  # passes over the clips (SeLaVi: 200)
    batch_size: int = 256  # clips per step (SeLaVi: 1024 over 64 GPUs)
    lr: float = 1e-2  # SGD learning rate, momentum 0.9, weight decay 1e-5 (SeLaVi: 0.01 per 16-clip GPU batch)
    label_updates: int = 100  # Sinkhorn-Knopp relabellings over the run, dense early (SeLaVi: 100)
    schedule_power: float = 1.5  # relabel at step total * t^power for t in [0, 1] (SeLaVi: 1.5)
    distribution: str = "uniform"  # cluster-size prior: uniform or gauss (SeLaVi's best: gauss)
    gauss_sd: float = 0.1  # relative spread of the gauss cluster sizes (SeLaVi: 0.1)
    end_to_end_audio: bool = False  # train DAVEnet on the cached log-mel (else the frozen cached davenet group)
    audio_frames: int = 1000  # log-mel frames per end-to-end audio window, 100 per second
    # end-to-end audio in training: each clip's log-mel shifted by a gain drawn from U(-g, g) dB (SeLaVi's
    # volume jitter x U(0.9, 1.1): 0.9; learn_speech uses 20, as loudness tells its speakers apart)
    audio_gain_db: float = 0.9
    compat_marginals: bool = False  # reproduce the released code's r ~ 1/d (see spec 4.5)
    # batches run through the model in training mode, without updates, before the first labelling, so that
    # BatchNorm's running statistics (used by the eval-mode label pass) are the data's (SeLaVi's utils.py has
    # it, spec 4.3: 20; its released main.py does not call it; see the README for what it did here)
    bn_warmup: int = 0
    align: str = "hungarian"  # audio head aligned to the video head at the first update: hungarian (exact) or none
    feat_dim: int = 512  # encoder output size (SeLaVi: 512)
    dropout: float = 0.3  # dropout in the heads (SeLaVi: 0.3)
    checkpoint_every: int = 100  # steps between atomic checkpoints (--resume continues from the last)
    seed: int = 1  # batches and initialisation are a function of the seed
    device: str = "cpu"  # cpu or cuda[:N]
    resume: bool = False  # continue the run in --out from its last checkpoint, to the same result
    loader_workers: int = default_workers()  # processes forming batches beside training (0: in-process)


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
        self.encoders = clips.encoders(cfg.feat_dim)
        self.heads = nn.ModuleDict({m: nn.ModuleList([mlp_head(cfg.feat_dim, cfg.k, cfg.dropout)
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
def warm_up_batchnorm(model: SeLaVi, batches, device) -> None:
    """Forward ``batches`` through the encoders and every head in training mode, every BatchNorm averaging
    their statistics with equal weights (momentum None): the running statistics become the data's, not
    (0, 1) (SeLaVi's warmup_batchnorm; with the usual momentum 0.1, 20 batches keep 12% of the (0, 1)).
    Without it the first, eval-mode label pass sees the statistics at init: on learn_speech the video
    encoder's outputs had std 0.03 and the audio's 3.1 (DAVEnet's input BatchNorm passing raw dB), so the
    first labels were the audio's."""
    norms = [bn for bn in model.modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    for b in batches:
        z = forward(model.encoders, b, device)
        for m, heads in model.heads.items():
            for head in heads:
                head(torch.relu(z[m]))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


def features(model: SeLaVi, clips: ClipSet, cfg: SeLaViConfig) -> dict[str, torch.Tensor]:
    """Every clip's encoder outputs; float16 once float32 would pass 4 GB (1M clips at 512-d: 4 GB)."""
    big = len(clips) * cfg.feat_dim * 2 * 4 > 4 << 30
    return encode(model.encoders, clips, device=cfg.device, dtype=torch.float16 if big else torch.float32)


def train(cfg: SeLaViConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    run = RunDir(cfg)
    t0 = time.time()
    clips = ClipSet(cfg)
    n = len(clips)
    if n < max(cfg.batch_size, cfg.k):
        raise ValueError(f"{n} clips: lower --batch-size / --k")
    torch.manual_seed(cfg.seed)
    model = SeLaVi(clips, cfg).to(cfg.device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-5, fused=True)
    sampler = SeLaViSampler(clips.clips, cfg.batch_size, cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    updates = update_steps(total, cfg.label_updates, cfg.schedule_power)
    rng_sizes = np.random.default_rng([cfg.seed, 7])
    sizes = [np.maximum(1.0, (1 + cfg.gauss_sd * rng_sizes.normal(size=cfg.k)) * n / cfg.k)
             if cfg.distribution == "gauss" else None for _ in range(cfg.heads)]  # one sample per head, kept
    if cfg.distribution not in ("uniform", "gauss"):
        raise ValueError(f"unknown --distribution {cfg.distribution!r} (uniform, gauss)")
    labels = torch.zeros(cfg.heads, n, dtype=torch.long)
    step, aligned = 0, False
    if (state := run.load()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        labels, step, aligned = state["labels"], int(state["step"]), bool(state["aligned"])
    run.open_log(step)
    run.write_config(cfg, method="selavi", video_dim=clips.video_dim, audio_dim=clips.audio_dim)
    print(f"selavi: {n} clips, {cfg.heads} heads, k={cfg.k}, {total} steps, {len(updates)} label updates, "
          f"{cfg.distribution} marginals, starting at step {step}")
    model.train()
    if step == 0 and cfg.bn_warmup:
        warm_up_batchnorm(model, step_loader(cfg.store, clips.spec, sampler, 0, min(cfg.bn_warmup, total), 0),
                          cfg.device)
    record: dict = {}
    loader = step_loader(cfg.store, clips.spec, sampler, step, total, cfg.loader_workers)
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train")
    wait = InputWait()
    for step, b in zip(range(step, total), wait.wrap(loader)):
        if step in updates:  # one head at a time: RAM holds the features and one head's N x K log-probs
            feats = features(model, clips, cfg)
            old = labels.clone()
            iters = []
            for h in range(cfg.heads):
                logp = model.head_log_probs(feats, h)
                if not aligned and cfg.align == "hungarian":
                    perm = hungarian_alignment(logp["v"], logp["a"], log=True)
                    last = model.heads["a"][h][-1]
                    with torch.no_grad():  # output k of the audio head now predicts what its output perm[k] did
                        last.weight.copy_(last.weight[perm])
                        last.bias.copy_(last.bias[perm])
                    logp["a"] = logp["a"][:, perm]
                joint = logp["v"].add_(logp["a"]).div_(2)  # in place: RAM holds one N x K at a time
                del logp
                mass = sum(torch.exp(cfg.lam * joint[i:i + (1 << 16)]).sum(0) for i in range(0, n, 1 << 16))
                r = marginals(sizes[h], mass, cfg.compat_marginals)
                labels[h], it = sinkhorn_labels(joint, cfg.lam, r)
                iters.append(it)
                del joint
            aligned = True
            del feats
            record = {"nmi_prev": float(np.mean([normalized_mutual_info_score(old[h], labels[h])
                                                 for h in range(cfg.heads)])),
                      "sk_iterations": float(np.mean(iters)),
                      "clusters_used": float(np.mean([len(torch.unique(labels[h])) for h in range(cfg.heads)]))}
        idx = torch.from_numpy(sampler.positions(step))
        z = forward(model.encoders, b, cfg.device)
        y = labels[:, idx].to(cfg.device)
        ce = {m: torch.stack([F.cross_entropy(head(torch.relu(z[m])), y[h])
                              for h, head in enumerate(model.heads[m])]).mean() for m in "va"}
        loss = 0.5 * ce["v"] + 0.5 * ce["a"]
        check_finite(loss, step, cfg.store)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == total - 1 or record:
            run.log({"step": step, "loss": loss.item(), "ce_v": ce["v"].item(), "ce_a": ce["a"].item(), **record,
                     "input_wait": wait.share(), "time": round(time.time() - t0, 3)})
            record = {}
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            run.save({"model": model.state_dict(), "opt": opt.state_dict(), "labels": labels,
                      "step": torch.tensor(step + 1), "aligned": torch.tensor(aligned)})
        bar.update()
    bar.close()
    run.close()
    torch.save(model.state_dict(), run.path / "model.pt")
    # test-time clusters: argmax of p_v * p_a per head, no Sinkhorn (SeLaVi's get_clusters)
    feats = features(model, clips, cfg)
    predicted = {}
    for h in range(cfg.heads):
        logp = model.head_log_probs(feats, h)
        predicted[f"head{h}"] = logp["v"].add_(logp["a"]).argmax(1).numpy()
    pseudo = {f"pseudo_head{h}": labels[h].numpy() for h in range(cfg.heads)}
    results = export_labels(run.path, clips, {**predicted, **pseudo}, best_of="head")
    return {"steps": total, "clips": n, "seconds": time.time() - t0, **results}
