"""Evaluation metrics as pure functions: retrieval R@k / median rank, clustering NMI / ARI / accuracy / SeLaVi's set."""
from __future__ import annotations

import numpy as np

# scipy and scikit-learn are imported where used: 1.1 s of every trainers command's start otherwise


TIES = {"pessimistic": "a tie with the true item counts against it",
        "optimistic": "a tie with the true item counts as a hit (MCN's compute_metrics)"}


def retrieval_ranks(sim: np.ndarray, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of the true item (the diagonal) for each query row.

    ``ties``: pessimistic = every other candidate scoring >= the true one ranks above it; optimistic = only
    those scoring > it (MCN's compute_metrics, which inflates R@k where captions repeat). A NaN true score ranks
    last (a miss, never a hit); a NaN candidate never ranks above the true item.
    """
    if ties not in TIES:
        raise ValueError(f"ties {ties!r}: choose {' or '.join(TIES)}")
    sim = np.asarray(sim, dtype=np.float64)
    true = np.diag(sim)[:, None]
    ranks = (sim >= true).sum(axis=1) if ties == "pessimistic" else (sim > true).sum(axis=1) + 1
    return np.where(np.isnan(true[:, 0]), sim.shape[1], ranks)


def retrieval_metrics(sim: np.ndarray, ks=(1, 5, 10), ties: str = "pessimistic", missed: int = 0) -> dict:
    """R@k and median rank of the true item (the diagonal), its chance R@1 (1 / N), and how many queries tie:
    another candidate scores exactly the true one's score (shared captions, duplicate clips). ``missed``:
    queries that could not be scored (clips missing a modality), counted as misses at every k, ranked past the
    last candidate (the MSR-VTT convention: N is then every clip of the test set)."""
    sim = np.asarray(sim, dtype=np.float64)
    n = len(sim) + missed
    ranks = np.concatenate([retrieval_ranks(sim, ties), np.full(missed, np.inf)])
    out = {f"R@{k}": float((ranks <= k).mean()) if n else float("nan") for k in ks}
    out["MedR"] = float(np.median(ranks)) if n else float("nan")
    out["N"] = int(n)
    out["missed"] = int(missed)
    out["chance R@1"] = 1 / n if n else float("nan")
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
    from scipy.optimize import linear_sum_assignment

    table = _table(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def _table(y_true, y_pred) -> np.ndarray:
    """Cluster x class counts."""
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def purity(y_true, y_pred) -> float:
    """Size-weighted: the share of clips in their cluster's majority class."""
    table = _table(y_true, y_pred)
    return float(table.max(axis=1).sum() / table.sum())


def clustering_metrics(y_true, y_pred) -> dict[str, float]:
    """NMI, ARI, Hungarian accuracy and size-weighted purity; and SeLaVi's set (its clustering_metrics.py): aNMI
    (adjusted MI, arithmetic mean), the unweighted mean over clusters of each cluster's purity and of its class
    entropy (nats), and whether K (clusters found) equals C (classes), as SeLaVi's accuracy assumes."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    table = _table(y_true, y_pred)
    shares = table / table.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(shares > 0, shares * np.log(shares), 0.0).sum(axis=1)
    return {"NMI": float(normalized_mutual_info_score(y_true, y_pred)),
            "ARI": float(adjusted_rand_score(y_true, y_pred)),
            "accuracy": cluster_accuracy(y_true, y_pred), "purity": purity(y_true, y_pred),
            "aNMI": float(adjusted_mutual_info_score(y_true, y_pred)),
            "mean cluster purity": float(shares.max(axis=1).mean()), "mean cluster entropy": float(entropy.mean()),
            "K": int(table.shape[0]), "C": int(table.shape[1])}
