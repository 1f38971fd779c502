"""Evaluation metrics as pure functions: retrieval R@k / median rank, clustering NMI / ARI / accuracy."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def retrieval_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the true item (the diagonal) for each query row.

    Ties are counted pessimistically: every other candidate scoring >= the true one ranks above it.
    (MCN's compute_metrics counts a tie as a hit instead, which inflates R@k.) A NaN true score ranks last
    (a miss, never a hit); a NaN candidate never ranks above the true item.
    """
    sim = np.asarray(sim, dtype=np.float64)
    true = np.diag(sim)[:, None]
    ranks = (sim >= true).sum(axis=1)  # the true item itself is one of them
    return np.where(np.isnan(true[:, 0]), sim.shape[1], ranks)


def retrieval_metrics(sim: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """R@k and median rank of the true item (the diagonal), its chance R@1 (1 / N), and how many queries tie:
    another candidate scores exactly the true one's score (shared captions, duplicate clips), counted against."""
    sim = np.asarray(sim, dtype=np.float64)
    ranks = retrieval_ranks(sim)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["MedR"] = float(np.median(ranks))
    out["N"] = int(len(ranks))
    out["chance R@1"] = 1 / len(ranks)
    out["tied queries"] = int(((sim == np.diag(sim)[:, None]).sum(axis=1) > 1).sum())
    return out


def class_retrieval_metrics(sim: np.ndarray, labels, ks=(1, 5)) -> dict[str, float]:
    """Class-level retrieval: a hit at k when one of the k best-scored candidates has the query's label.
    Chance R@1: the mean share of candidates with the query's label. Ties in the top k are taken in the
    candidates' order."""
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(-np.asarray(sim, dtype=np.float64), axis=1, kind="stable")
    same = y[order] == y[:, None]
    out = {f"R@{k}": float(same[:, :k].any(axis=1).mean()) for k in ks}
    out["chance R@1"] = float((np.bincount(y)[y] / len(y)).mean())
    out["N"] = int(len(y))
    return out


def cluster_accuracy(y_true, y_pred) -> float:
    """Best one-to-one mapping of predicted clusters to labels (Hungarian), as a fraction correct."""
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(t))


def purity(y_true, y_pred) -> float:
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return float(table.max(axis=1).sum() / len(t))


def clustering_metrics(y_true, y_pred) -> dict[str, float]:
    return {"NMI": float(normalized_mutual_info_score(y_true, y_pred)),
            "ARI": float(adjusted_rand_score(y_true, y_pred)),
            "accuracy": cluster_accuracy(y_true, y_pred), "purity": purity(y_true, y_pred)}
