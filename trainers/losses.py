"""MCN losses as small pure functions (spec: shared/spec/mcn.md section 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mms(sim: torch.Tensor, margin: float = 0.001) -> torch.Tensor:
    """Masked margin softmax over a B x B similarity matrix, both directions.

    L = CE_rows(S - margin*I) + CE_cols(S - margin*I), targets on the diagonal, means over B.
    """
    s = sim - margin * torch.eye(len(sim), device=sim.device, dtype=sim.dtype)
    target = torch.arange(len(sim), device=sim.device)
    return F.cross_entropy(s, target) + F.cross_entropy(s.t(), target)


def cluster_loss(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
                 margin: float = 0.001) -> torch.Tensor:
    """Cross-entropy towards the assigned centroid with a margin on it; other centroids are impostors."""
    logits = x @ centroids.t() - margin * F.one_hot(labels, len(centroids)).to(x.dtype)
    return F.cross_entropy(logits, labels)


def reconstruction_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], weight: float = 50.0) -> torch.Tensor:
    """weight * mean over the batch of the sum over modalities of the per-sample MSE (mean over dims)."""
    per_sample = sum(((pred - target) ** 2).mean(dim=1) for pred, target in pairs)
    return weight * per_sample.mean()


@torch.no_grad()
def kmeans_cosine(x: torch.Tensor, k: int, centroids: torch.Tensor | None = None, max_iter: int = 100,
                  tol: float = 1e-4, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means as fast_pytorch_kmeans(mode='cosine') does it for MCN.

    Assign by the largest cosine similarity, move each centroid to the plain mean of its (raw) members,
    an empty cluster's centroid becomes zero, stop when the summed squared shift <= tol. Warm-starts
    from ``centroids`` when given, else from k random rows.
    """
    x = x.float()
    if centroids is None:
        idx = torch.randint(len(x), (k,), generator=generator) if len(x) < k else \
            torch.randperm(len(x), generator=generator)[:k]
        centroids = x[idx.to(x.device)].clone()
    xn = F.normalize(x, dim=1)
    for _ in range(max_iter):
        labels = (xn @ F.normalize(centroids, dim=1).t()).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
        shift = ((new - centroids) ** 2).sum()
        centroids = new
        if shift <= tol:
            break
    labels = (xn @ F.normalize(centroids, dim=1).t()).argmax(dim=1)
    return labels, centroids


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster of each row by cosine similarity (centroids frozen)."""
    return (F.normalize(x.float(), dim=1) @ F.normalize(centroids, dim=1).t()).argmax(dim=1)
