"""MCN losses as small pure functions (spec: shared/spec/mcn.md section 2)."""
from __future__ import annotations

import math

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
                 margin: float = 0.001, temperature: float = 0.0) -> torch.Tensor:
    """Cross-entropy towards the assigned centroid with a margin on it; other centroids are impostors.
    Logits: raw dot products (``temperature`` 0, MCN's), or cosine similarities / ``temperature``."""
    if temperature:
        x, centroids = F.normalize(x, dim=1), F.normalize(centroids, dim=1)
    logits = x @ centroids.t() - margin * F.one_hot(labels, len(centroids)).to(x.dtype)
    return F.cross_entropy(logits / (temperature or 1.0), labels)


def reconstruction_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], weight: float = 50.0) -> torch.Tensor:
    """weight * mean over the batch of the sum over modalities of the per-sample MSE (mean over dims)."""
    per_sample = sum(((pred - target) ** 2).mean(dim=1) for pred, target in pairs)
    return weight * per_sample.mean()


@torch.no_grad()
def kmeans_cosine(x: torch.Tensor, k: int, centroids: torch.Tensor | None = None, max_iter: int = 100,
                  tol: float = 1e-4, generator: torch.Generator | None = None,
                  reassign: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means as fast_pytorch_kmeans(mode='cosine') does it for MCN.

    Assign by the largest cosine similarity, move each centroid to the plain mean of its (raw) members,
    an empty cluster's centroid becomes zero, stop when the summed squared shift <= tol. Warm-starts
    from ``centroids`` when given, else from k random rows. The labels returned are, as fast_pytorch_kmeans'
    ``fit_predict``, the last assignment, made before the last centroid update; ``reassign``: assign to the
    returned centroids instead.
    """
    x = x.float()
    if centroids is None:
        idx = torch.randint(len(x), (k,), generator=generator) if len(x) < k else \
            torch.randperm(len(x), generator=generator)[:k]
        centroids = x[idx.to(x.device)].clone()
    xn = F.normalize(x, dim=1)
    for _ in range(max_iter):
        labels = (xn @ F.normalize(centroids, dim=1).t()).argmax(dim=1)
        sums = cluster_sums(x, labels, k)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
        shift = ((new - centroids) ** 2).sum()
        centroids = new
        if shift <= tol:
            break
    if reassign:
        labels = (xn @ F.normalize(centroids, dim=1).t()).argmax(dim=1)
    return labels, centroids


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int, one_hot: bool | None = None) -> torch.Tensor:
    """(k, D): each cluster's sum of its rows, the same bits every run. On CUDA, ``index_add_`` adds floats with
    atomics, in an order that changes from run to run (so would the centroids, and a resumed run's labels); a
    one-hot matmul (``one_hot``; the default on CUDA) costs there what the assignment's matmul costs, and cuBLAS
    gives the same bits each run."""
    if x.is_cuda if one_hot is None else one_hot:
        return F.one_hot(labels, k).to(x.dtype).t() @ x
    return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster of each row by cosine similarity (centroids frozen)."""
    return (F.normalize(x.float(), dim=1) @ F.normalize(centroids, dim=1).t()).argmax(dim=1)


# ---- MMV (spec: shared/spec/mmv_xdc_selavi.md section 2.3) -------------------------------------

NEG = -1e9


def milnce(x: torch.Tensor, y: torch.Tensor, x_valid: torch.Tensor | None = None,
           y_valid: torch.Tensor | None = None, temperature: float = 0.07, variant: str = "code") -> torch.Tensor:
    """NCE (y: B x D) or MIL-NCE (y: B x K x D candidates per clip) on L2-normalised embeddings / temperature.

    variant 'code': the released MIL-NCE/VATT construction: denominator = logsumexp over row i and column i
      of the B x B x K scores, so the positives are counted twice (floor log 2).
    variant 'paper': both directions, positives counted once.
    variant 'v2a': one direction (x -> y), InfoNCE.
    x_valid (B,) masks clips missing x or y; y_valid (B, K) masks padding candidates. Invalid clips are
    never negatives and the mean runs over valid clips only; no valid clip -> 0.
    """
    if y.dim() == 2:
        y = y[:, None]
        y_valid = None if y_valid is None else y_valid[:, None]
    b, k, _ = y.shape
    x_valid = torch.ones(b, dtype=torch.bool, device=x.device) if x_valid is None else x_valid.bool()
    y_valid = torch.ones(b, k, dtype=torch.bool, device=x.device) if y_valid is None else y_valid.bool()
    s = torch.einsum("id,jkd->ijk", F.normalize(x, dim=-1), F.normalize(y, dim=-1)) / temperature
    pair_ok = x_valid[:, None, None] & x_valid[None, :, None] & y_valid[None, :, :]
    s = s.masked_fill(~pair_ok, NEG)
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    numerator = torch.logsumexp(s[eye], dim=1)  # (B,) over the clip's own candidates
    rows = s.reshape(b, b * k)
    cols = s.permute(1, 0, 2)  # cols[i] = scores of every clip against clip i's candidates
    if variant == "code":
        denominator = torch.logsumexp(torch.cat([rows, cols.reshape(b, b * k)], dim=1), dim=1)
    elif variant == "paper":
        cols = cols.masked_fill(eye[:, :, None], NEG)  # the positives are already in the row half
        denominator = torch.logsumexp(torch.cat([rows, cols.reshape(b, b * k)], dim=1), dim=1)
    elif variant == "v2a":
        denominator = torch.logsumexp(rows, dim=1)
    else:
        raise ValueError(f"unknown NCE variant {variant!r} (code, paper, v2a)")
    per_clip = (denominator - numerator) * x_valid
    return per_clip.sum() / x_valid.sum().clamp(min=1)


# ---- SeLaVi (spec section 4.4) ------------------------------------------------------------------

def sinkhorn_labels(log_p: torch.Tensor, lam: float = 20.0, marginals: torch.Tensor | None = None,
                    tol: float = 0.1, max_iter: int = 2000, check_every: int = 10,
                    chunk: int = 1 << 16) -> tuple[torch.Tensor, int]:
    """Sinkhorn-Knopp pseudo-labels in the log domain (float64), as SeLaVi's optimize_L_sk.

    log_p (N, K): per-item log-scores; SeLaVi passes (log p_v + log p_a)/2 so that the kernel
    P = exp(lam * log_p) = (p_v * p_a)^(lam/2). Rows get mass 1/N, columns ``marginals`` (uniform by
    default). Converged when sum_i |beta_i / beta_new_i - 1| < tol, checked every 10 iterations, at most
    max_iter. Labels = argmax_k beta_i P_ik alpha_k. Returns (labels, iterations).
    Rows are processed ``chunk`` at a time, so temporaries stay at chunk x K (RAM: N x K float64 + that).
    """
    logk = lam * log_p.double()
    n, k = logk.shape
    log_r = torch.log(marginals.double()) if marginals is not None else torch.full((k,), -math.log(k), dtype=torch.float64)
    log_c = torch.full((n,), -math.log(n), dtype=torch.float64)
    log_beta = log_c.clone()  # beta starts at 1/N
    it = 0
    while it < max_iter:
        it += 1
        log_alpha = log_r - torch.logsumexp(torch.stack([torch.logsumexp(
            logk[i:i + chunk] + log_beta[i:i + chunk, None], dim=0) for i in range(0, n, chunk)]), dim=0)
        new_beta = log_c - torch.cat([torch.logsumexp(logk[i:i + chunk] + log_alpha[None, :], dim=1)
                                      for i in range(0, n, chunk)])
        if it % check_every == 0 and torch.abs(torch.exp(log_beta - new_beta) - 1).sum() < tol:
            log_beta = new_beta
            break
        log_beta = new_beta
    labels = torch.cat([(logk[i:i + chunk] + log_alpha[None, :]).argmax(dim=1) for i in range(0, n, chunk)])
    return labels, it
