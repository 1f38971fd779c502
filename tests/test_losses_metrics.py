import math

import numpy as np
import pytest
import torch

from trainers.losses import assign, cluster_loss, cluster_sums, kmeans_cosine, mms, reconstruction_loss
from trainers.metrics import class_retrieval_metrics, clustering_metrics, retrieval_metrics, retrieval_ranks
from trainers.model import MCN, parse_combo


def test_mms_by_hand():
    s = torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    d = 0.001
    # rows: -log(e^(2-d)/(e^(2-d)+e^1)), -log(e^(3-d)/(e^(3-d)+e^0.5)); columns: same with S transposed
    rows = -math.log(math.exp(2 - d) / (math.exp(2 - d) + math.exp(1))) \
        - math.log(math.exp(3 - d) / (math.exp(3 - d) + math.exp(0.5)))
    cols = -math.log(math.exp(2 - d) / (math.exp(2 - d) + math.exp(0.5))) \
        - math.log(math.exp(3 - d) / (math.exp(3 - d) + math.exp(1)))
    assert mms(s, d).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_mms_margin_only_lowers_the_positive():
    s = torch.zeros(3, 3)
    assert mms(s, 0.0).item() == pytest.approx(2 * math.log(3), rel=1e-6)
    assert mms(s, 0.5).item() > mms(s, 0.0).item()


def test_cluster_loss_by_hand():
    x = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = 0.001
    logits = [2 - d, 0.0, 1.0]  # x.c_k, margin on the assigned centroid 0
    expected = -math.log(math.exp(logits[0]) / sum(math.exp(v) for v in logits))
    assert cluster_loss(x, c, torch.tensor([0]), d).item() == pytest.approx(expected, rel=1e-6)
    # --cluster-temperature 0.5: cosine similarities (1, 0, 1/sqrt 2), the margin on the assigned one, / 0.5
    logits = [(1 - d) / 0.5, 0.0, 2 ** -0.5 / 0.5]
    expected = -math.log(math.exp(logits[0]) / sum(math.exp(v) for v in logits))
    assert cluster_loss(3 * x, c, torch.tensor([0]), d, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_by_hand():
    pred_v, tgt_v = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    pred_t, tgt_t = torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [3.0]])
    # per sample: v mse (0.5, 2.0) + t mse (0, 4) -> (0.5, 6.0); mean 3.25; x 50
    assert reconstruction_loss([(pred_v, tgt_v), (pred_t, tgt_t)]).item() == pytest.approx(162.5)


def test_kmeans_cosine_separates_directions_and_zeroes_empty_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0]) * (torch.rand(20, 1, generator=g) * 5 + 1) + 0.01 * torch.randn(20, 2, generator=g)
    b = torch.tensor([0.0, 1.0]) * (torch.rand(20, 1, generator=g) * 5 + 1) + 0.01 * torch.randn(20, 2, generator=g)
    labels, c = kmeans_cosine(torch.cat([a, b]), 2, generator=g)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1 and labels[0] != labels[20]
    # centroid = plain mean of raw members (not normalised)
    torch.testing.assert_close(c[labels[0]], a.mean(0))
    # an empty cluster's centroid becomes zero (fast_pytorch_kmeans behaviour)
    labels, c = kmeans_cosine(a, 2, centroids=torch.tensor([[1.0, 0.0], [-1.0, -1.0]]), max_iter=1)
    assert (labels == 0).all() and torch.equal(c[1], torch.zeros(2))
    assert torch.equal(assign(a, c), labels)


@pytest.mark.parametrize("one_hot", [False, True])
def test_cluster_sums_by_hand(one_hot):
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 4.0]])
    got = cluster_sums(x, torch.tensor([2, 0, 2, 2]), 4, one_hot=one_hot)
    torch.testing.assert_close(got, torch.tensor([[3.0, -1.0], [0.0, 0.0], [-0.5, 6.5], [0.0, 0.0]]), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the bits of k-means on a GPU")
def test_kmeans_on_cuda_gives_the_same_bits_every_run_and_the_cpu_clusters():
    """index_add_ on CUDA adds with atomics in a changing order; k-means there must give the same centroids and
    labels every run (a resumed run relabels as the first did), and agree with the CPU's within float error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12288, 512, generator=g) + 3 * torch.randn(64, 512, generator=g).repeat(192, 1)
    start = x[torch.randperm(len(x), generator=g)[:64]].clone()
    runs = [kmeans_cosine(x.cuda(), 64, start.cuda(), max_iter=20) for _ in range(3)]
    for labels, centroids in runs[1:]:
        assert torch.equal(labels, runs[0][0]) and torch.equal(centroids, runs[0][1])
    labels, centroids = kmeans_cosine(x, 64, start.clone(), max_iter=20)
    assert (labels == runs[0][0].cpu()).float().mean() > 0.999
    torch.testing.assert_close(centroids, runs[0][1].cpu(), rtol=1e-4, atol=1e-4)


def test_retrieval_ties_count_against_the_query():
    sim = np.array([[1.0, 1.0, 0.0],   # tie with a wrong item: pessimistic rank 2
                    [0.0, 2.0, 1.0],   # rank 1
                    [5.0, 4.0, 3.0]])  # rank 3
    assert retrieval_ranks(sim).tolist() == [2, 1, 3]
    m = retrieval_metrics(sim, ks=(1, 2))
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@2"] == pytest.approx(2 / 3) and m["MedR"] == 2
    assert m["tied queries"] == 1 and m["chance R@1"] == pytest.approx(1 / 3)


def test_optimistic_ties_count_as_hits_as_mcn_does():
    sim = np.array([[1.0, 1.0, 0.0],   # tie with a wrong item: a hit (MCN's compute_metrics: rank by >)
                    [0.0, 2.0, 2.0],   # tied: rank 1
                    [5.0, 4.0, 3.0]])  # rank 3
    assert retrieval_ranks(sim, "optimistic").tolist() == [1, 1, 3]
    assert retrieval_metrics(sim, ks=(1,), ties="optimistic")["R@1"] == pytest.approx(2 / 3)
    nan = float("nan")
    assert retrieval_ranks(np.array([[nan, 0.0], [0.0, 1.0]]), "optimistic").tolist() == [2, 1]
    with pytest.raises(ValueError, match="choose pessimistic or optimistic"):
        retrieval_ranks(sim, "random")


def test_dropped_queries_counted_as_misses_the_msrvtt_way():
    sim = np.eye(3)  # three perfect queries, two clips dropped: N = 5, the dropped ones a miss at every k
    m = retrieval_metrics(sim, ks=(1, 10), missed=2)
    assert m["R@1"] == pytest.approx(3 / 5) and m["R@10"] == pytest.approx(3 / 5) and m["N"] == 5
    assert m["MedR"] == 1 and m["missed"] == 2 and m["chance R@1"] == pytest.approx(1 / 5)
    m = retrieval_metrics(np.eye(2), ks=(1,), missed=3)
    assert m["MedR"] == float("inf") and m["R@1"] == pytest.approx(2 / 5)


def test_a_nan_similarity_is_never_a_hit():
    nan = float("nan")
    sim = np.array([[nan, 0.0, 0.0],   # the true score is NaN: a miss, ranked last (before: rank 0, an R@1 hit)
                    [nan, 2.0, 1.0],   # a NaN candidate does not rank above the true item: rank 1
                    [0.0, 1.0, 3.0]])  # rank 1
    assert retrieval_ranks(sim).tolist() == [3, 1, 1]
    assert retrieval_metrics(sim)["R@1"] == pytest.approx(2 / 3)


def test_class_level_retrieval_by_hand():
    sim = np.array([[0.1, 0.9, 0.0, 0.2],   # best: clip 1 (label a, as the query): hit at 1
                    [0.8, 0.1, 0.9, 0.0],   # best: clip 2 (b), then clip 0 (a): hit at 2
                    [0.0, 0.3, 0.1, 0.2],   # best: clip 1 (a), then 3 (b): hit at 2
                    [0.0, 0.0, 0.0, 0.0]])  # all tied: candidates' order, clip 0 (a), 1 (a): miss at 2
    m = class_retrieval_metrics(sim, ["a", "a", "b", "b"], ks=(1, 2))
    assert m["R@1"] == 0.25 and m["R@2"] == 0.75 and m["chance R@1"] == 0.5 and m["N"] == 4
    assert class_retrieval_metrics(sim, ["a", "b", "b", "b"], ks=(1,))["chance R@1"] == (1 / 4 + 3 * 3 / 4) / 4


def test_clustering_metrics_by_hand():
    y = ["a", "a", "b", "b"]
    perfect = clustering_metrics(y, [5, 5, 7, 7])
    assert perfect == {"NMI": 1.0, "ARI": 1.0, "accuracy": 1.0, "purity": 1.0, "aNMI": 1.0,
                       "mean cluster purity": 1.0, "mean cluster entropy": 0.0, "K": 2, "C": 2}
    m = clustering_metrics(y, [0, 0, 0, 1])
    assert m["accuracy"] == 0.75 and m["purity"] == 0.75  # best mapping 0->a, 1->b


def test_selavi_cluster_purity_and_entropy_are_unweighted_means_over_clusters():
    """SeLaVi's clustering_metrics.py: per non-empty cluster, max share and entropy (nats) of its classes, then
    the plain mean over clusters (a big impure cluster counts as much as a small pure one)."""
    m = clustering_metrics([0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, 2])  # clusters: {0,0,1}, {1,1}, {2}
    assert m["purity"] == pytest.approx(5 / 6)  # size-weighted
    assert m["mean cluster purity"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert m["mean cluster entropy"] == pytest.approx(h / 3)
    assert (m["K"], m["C"]) == (3, 3)
    from sklearn.metrics import adjusted_mutual_info_score

    assert m["aNMI"] == pytest.approx(adjusted_mutual_info_score([0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, 2]))
    assert clustering_metrics([0, 1, 2, 3], [0, 0, 1, 1])["K"] == 2  # K != C: said, as SeLaVi's accuracy assumes K = C


def test_combo_grammar():
    assert parse_combo("va+all") == {"va": "va", "all": "vat"}
    assert parse_combo("vt+va") == {"vt": "vt", "va": "va"}
    for bad in ("vx", "va+av", "all+"):
        with pytest.raises(ValueError):
            parse_combo(bad)


def test_each_space_has_its_own_heads_and_shares_davenet():
    model = MCN("va+all", dim=32, video_dim=16, end_to_end_audio=True)
    assert set(model.spaces) == {"va", "all"} and not hasattr(model.spaces["va"], "text")
    out = model(torch.randn(3, 16), torch.randn(3, 40, 64), torch.randn(3, 5, 300))
    assert set(out["va"][0]) == {"v", "a"} and set(out["all"][0]) == {"v", "a", "t"}
    assert out["all"][0]["t"].shape == (3, 32) and len(out["all"][1]) == 3  # 3 decoders
    assert model.spaces["va"].video is not model.spaces["all"].video


def test_kmeans_returns_the_assignment_made_before_the_last_centroid_update():
    """fast_pytorch_kmeans' fit_predict (MCN's k-means) returns the labels of its last assignment step, computed
    before that step's centroid update. Hand case: point 1 is nearer centroid 1 at the start (cos 0.714 vs
    0.7), but centroid 1 then moves to the mean of points 1 and 2 and point 1 would now go to centroid 0."""
    x = torch.tensor([[1.0, 0.0], [0.7, 0.714], [-0.9, 0.436]])
    start = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels, centroids = kmeans_cosine(x, 2, start.clone(), max_iter=1)
    torch.testing.assert_close(centroids, torch.tensor([[1.0, 0.0], [-0.1, 0.575]]))
    assert labels.tolist() == [0, 1, 1]
    assert kmeans_cosine(x, 2, start.clone(), max_iter=1, reassign=True)[0].tolist() == [0, 0, 1]
