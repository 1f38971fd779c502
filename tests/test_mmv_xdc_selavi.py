import json
import math

import numpy as np
import pytest
import torch

from trainers.evaluate import evaluate
from trainers.losses import milnce, sinkhorn_labels
from trainers.methods.mmv import MMV, MMVConfig
from trainers.methods.selavi import SeLaViConfig, hungarian_alignment, marginals, update_steps
from trainers.methods.xdc import TARGETS, XDCConfig, balanced_sample, cluster
from trainers.train import train

# ---- losses: the spec's hand-computed values (B=2, tau=1, z_v = z_a = I) ---------------------------

@pytest.mark.parametrize("variant,expected", [("v2a", math.log(1 + 1 / math.e)),
                                              ("paper", math.log(1 + 2 / math.e)),
                                              ("code", math.log(2 * math.e + 2) - 1)])
def test_nce_variants_by_hand(variant, expected):
    z = torch.eye(2)
    assert milnce(z, z, temperature=1.0, variant=variant).item() == pytest.approx(expected, rel=1e-6)


def test_milnce_with_identical_candidates_equals_nce():
    z = torch.eye(2)
    assert milnce(z, torch.stack([z, z], 1), temperature=1.0).item() == pytest.approx(
        math.log(2 * math.e + 2) - 1, rel=1e-6)


def test_released_loss_floor_is_log2():
    z = torch.eye(4) * 50  # perfect, well-separated embeddings at a small temperature
    assert milnce(z, z, temperature=0.01, variant="code").item() == pytest.approx(math.log(2), abs=1e-4)
    assert milnce(z, z, temperature=0.01, variant="paper").item() == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("variant", ["code", "paper", "v2a"])
def test_masked_samples_are_neither_negatives_nor_averaged(variant):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 8, generator=g), torch.randn(6, 3, 8, generator=g)
    y_ok = torch.rand(6, 3, generator=g) > 0.3
    y_ok[:, 0] = True
    keep = torch.tensor([True, False, True, True, False, True])
    full = milnce(x, y, keep, y_ok, 0.07, variant)
    alone = milnce(x[keep], y[keep], None, y_ok[keep], 0.07, variant)
    assert full.item() == pytest.approx(alone.item(), rel=1e-5)
    assert milnce(x, y, torch.zeros(6, dtype=torch.bool), y_ok).item() == 0.0  # no valid clip: 0, not NaN


# ---- Sinkhorn, alignment, marginals ----------------------------------------------------------------

def test_sinkhorn_spec_example():
    p = torch.tensor([[.9, .1], [.8, .2], [.7, .3], [.6, .4]], dtype=torch.float64)
    assert p.argmax(1).tolist() == [0, 0, 0, 0]
    labels, _ = sinkhorn_labels(torch.log(p), lam=20.0)  # (log p_v + log p_a)/2 with p_v = p_a
    assert labels.tolist() == [0, 0, 1, 1]


def test_sinkhorn_balances_uniform_and_follows_given_marginals():
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(600, 3, generator=g) + torch.tensor([3.0, 0, 0]), 1).double()
    labels, _ = sinkhorn_labels(logp, 20.0, tol=1e-6)
    counts = torch.bincount(labels, minlength=3)
    assert (counts - 200).abs().max() <= 20, counts
    labels, _ = sinkhorn_labels(logp, 20.0, torch.tensor([0.5, 0.3, 0.2]), tol=1e-6)
    assert (torch.bincount(labels, minlength=3) / 600 - torch.tensor([0.5, 0.3, 0.2])).abs().max() < 0.05


def test_gaussian_marginals_follow_mass_rank():
    sizes = np.array([10.0, 30.0, 20.0])
    mass = torch.tensor([0.2, 0.5, 0.3])  # cluster 1 holds the most mass -> gets the largest size
    r = marginals(sizes, mass, compat=False).numpy()
    np.testing.assert_allclose(r, np.array([10, 30, 20]) / 60)
    r = marginals(sizes, mass, compat=True).numpy()  # released code: r ~ 1/d (inverted)
    assert r.argmax() == 0 and r.argmin() == 1
    assert marginals(None, mass, False) is None


def test_hungarian_alignment_undoes_a_known_permutation():
    p_v = torch.softmax(torch.randn(50, 6, generator=torch.Generator().manual_seed(2)), 1)
    pi = torch.tensor([3, 0, 5, 1, 4, 2])
    p_a = p_v[:, pi]
    perm = hungarian_alignment(p_v, p_a)
    torch.testing.assert_close(p_a[:, perm], p_v)


def test_update_schedule_is_dense_early():
    steps = sorted(update_steps(1000, 100, 1.5))
    assert steps[0] == 0 and steps[-1] == 1000 and steps[1] < 5 and steps[-1] - steps[-2] > 10


# ---- XDC pieces --------------------------------------------------------------------------------------

def test_xdc_variants_wire_the_right_targets():
    assert TARGETS["xdc"] == {"v": ["a"], "a": ["v"]}  # each encoder learns from the other's clusters
    assert TARGETS["sdc"] == {"v": ["v"], "a": ["a"]} and TARGETS["cdc"] == {"v": ["cat"], "a": ["cat"]}
    assert TARGETS["mdc"] == {"v": ["v", "a"], "a": ["a", "v"]}


def test_kmeans_on_duplicated_points_leaves_no_cluster_empty():
    x = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, -1.0]]).repeat(20, 1)
    labels = cluster(x, 3, pca=0, seed=0)
    assert len(np.unique(labels)) == 3


def test_balanced_sampler_draws_clusters_equally():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = balanced_sample(labels, 300, np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [100, 100, 100]


def test_xdc_balances_each_target_labelling_on_its_own():
    """XDC's video head learns the audio clusters, its audio head the video clusters: each head's rows are drawn
    balanced over the clusters it learns (before, both over the first source's only: skewed audio targets)."""
    from trainers.methods.xdc import XDCSampler

    n = 600
    labels = {"a": np.repeat([0, 1, 2], [500, 90, 10]), "v": np.tile([0, 1, 2], n // 3)}
    video_skewed = labels["v"].copy()
    video_skewed[:540] = 0  # the video clusters are skewed too, in another way
    labels["v"] = video_skewed
    sampler = XDCSampler(np.arange(n), labels, it=0, epochs=1, size=60, seed=0, first=0)
    seen = {s: [] for s in "av"}
    for step in range(sampler.per_epoch):
        idx = sampler.positions(step)
        assert len(idx) == 60
        for s in "av":
            seen[s].append(labels[s][idx[sampler.rows(s)]])
    for s in "av":
        counts = np.bincount(np.concatenate(seen[s]), minlength=3)  # a half epoch of a balanced order
        assert counts.min() > 0.8 * counts.max(), (s, counts)  # drawn in proportion: 250 / 45 / 5 for 'a'


# ---- each trainer learns planted structure -----------------------------------------------------------

@pytest.mark.slow  # learning run, ~7 s (fast tier < 4 min)
def test_mmv_fac_learns_retrieval(stores, tmp_path, device):
    cfg = MMVConfig(store=str(stores["train"]), out=str(tmp_path / "mmv"), batch_size=64, steps=150, warmup=10,
                    lr=2e-3, candidates=3, dim_va=64, dim_vat=32, text_dim=128, device=device)
    train(cfg, progress=False)
    r = evaluate(tmp_path / "mmv", str(stores["eval"]))
    chance = 1 / r["retrieval"]["t->v"]["N"]
    assert r["retrieval"]["t->v"]["R@1"] > 10 * chance, r["retrieval"]["t->v"]
    assert r["retrieval"]["a->v"]["R@1"] > 10 * chance, r["retrieval"]["a->v"]
    assert r["retrieval"]["a->t"]["spaces"] == ["at"] and r["retrieval"]["t->v"]["score"] == "t.v"


@pytest.mark.parametrize("graph", ["shared", "disjoint"])
def test_mmv_graphs_and_fac_shares_the_va_to_vat_head(graph, stores, tmp_path):
    cfg = MMVConfig(store=str(stores["train"]), out=str(tmp_path / graph), graph=graph, batch_size=32, steps=3,
                    warmup=1, dim_va=16, dim_vat=8, text_dim=16, loss="paper")
    assert train(cfg, progress=False)["steps"] == 3
    fac = MMV("fac", 64, 1024, 300, 16, 8, 16).eval()
    video = torch.randn(2, 64)
    spaces = fac.embed(video, torch.randn(2, 1024), torch.randn(2, 5, 300))
    with torch.no_grad():  # FAC: video reaches the text space through its video-audio embedding
        expected = torch.nn.functional.normalize(fac.va_vat(torch.relu(fac.v_va(video))), dim=-1)
    torch.testing.assert_close(spaces["vt"]["v"], expected)
    assert spaces["vt"]["t"].shape == (2, 8) and spaces["va"]["a"].shape == (2, 16)
    audio = torch.randn(2, 1024)
    spaces = fac.embed(None, audio, torch.randn(2, 5, 300))
    with torch.no_grad():  # ... and audio reaches text through the same va->vat head (MMV's audio->text path)
        expected = torch.nn.functional.normalize(fac.va_vat(torch.relu(fac.a_va(audio))), dim=-1)
    torch.testing.assert_close(spaces["at"]["a"], expected)
    assert set(spaces) == {"va", "vt", "at"} and torch.equal(spaces["at"]["t"], spaces["vt"]["t"])
    other = MMV(graph, 64, 1024, 300, 16, 8, 16).eval().embed(video, audio, torch.randn(2, 5, 300))
    assert ("at" in other) == (graph == "shared")  # disjoint: audio and text never share a space


@pytest.mark.slow  # learning run, 3 s (fast tier < 4 min)
def test_xdc_clusters_recover_the_planted_classes(stores, tmp_path, device):
    # 192 clips: PCA-whitening to many dims would amplify noise directions, so L2 only (--pca 0)
    cfg = XDCConfig(store=str(stores["classes"]), out=str(tmp_path / "xdc"), clusters=4, iterations=4, epochs=2,
                    batch_size=32, pca=0, device=device)
    out = train(cfg, progress=False)
    for source in ("cluster_v", "cluster_a"):  # chance NMI here is ~0.02
        assert out["metrics"]["task"][source]["NMI"] > 0.8, out["metrics"]["task"]
    assert (tmp_path / "xdc" / "labels.csv").read_text().count("\n") == 193


@pytest.mark.slow  # learning run, 6 s (fast tier < 4 min)
def test_selavi_heads_recover_the_planted_classes(stores, tmp_path, device):
    cfg = SeLaViConfig(store=str(stores["classes"]), out=str(tmp_path / "selavi"), heads=3, clusters=4, epochs=15,
                       batch_size=32, label_updates=10, distribution="gauss", device=device)
    out = train(cfg, progress=False)
    # best head over seeds 0-2 (chance ~0.02): CPU 0.31 / 0.56 / 0.54; H200, bf16 0.38 / 0.46 / 0.48, fp32 0.37 /
    # 0.41 / 0.47. The CPU run at the default seed is deterministic; a GPU's sums run in another order.
    assert out["best_head"]["task"]["NMI"] > (0.5 if device == "cpu" else 0.3), out["best_head"]
    assert out["metrics"]["task"]["head0"]["NMI"] > 0.3, out["metrics"]["task"]["head0"]
    assert set(out["labellings"]) >= {"head0", "pseudo_head0"}


def test_selavi_batchnorm_warm_up_averages_or_keeps_the_released_momentum(monkeypatch):
    """average: the statistics of the warm-up batches alone; released (SeLaVi's warmup_batchnorm): BatchNorm's
    momentum 0.1 from the statistics at init, so 20 batches of mean 1 leave a running mean of 1 - 0.9^20."""
    import trainers.methods.selavi as sv
    from torch import nn
    from trainers.methods.selavi import warm_up_batchnorm

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoders = nn.ModuleDict({"v": nn.BatchNorm1d(2), "a": nn.BatchNorm1d(2)})
            self.heads = nn.ModuleDict({"v": nn.ModuleList(), "a": nn.ModuleList()})

    batches = [{"video": torch.ones(4, 2) + torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]), "audio": torch.ones(4, 2),
                "valid_v": torch.ones(4, dtype=torch.bool)}] * 20
    monkeypatch.setattr(sv, "forward", lambda enc, b, device: {m: enc[m](b["video" if m == "v" else "audio"])
                                                                for m in "va"})
    for mode, want in (("average", 1.0), ("released", 1 - 0.9 ** 20)):
        model = Tiny()
        warm_up_batchnorm(model, batches, "cpu", mode)
        torch.testing.assert_close(model.encoders["v"].running_mean, torch.full((2,), want))
        assert model.encoders["v"].momentum == 0.1  # restored


def test_selavi_head_groups_label_shuffled_heads_from_their_own_augmented_passes(framed, tmp_path, monkeypatch):
    """SeLaVi's ind_groups: at each labelling the head order is shuffled and split into groups, and each
    group is labelled from its own pass over the clips under fresh training augmentations (crops here)."""
    import trainers.methods.selavi as sv

    groups = sv.head_groups(10, 2, seed=1, step=0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(10)) and [len(g) for g in groups] == [5, 5]
    assert np.concatenate(groups).tolist() != list(range(10))  # shuffled
    assert sv.head_groups(10, 2, 1, 0)[0].tolist() == groups[0].tolist() != sv.head_groups(10, 2, 1, 5)[0].tolist()
    assert [g.tolist() for g in sv.head_groups(3, 1, 1, 0)] == [[0, 1, 2]]
    passes, form = [], sv.features

    def spy(model, clips, cfg, rng=None):
        out = form(model, clips, cfg, rng)
        passes.append(out["v"].clone())
        return out

    monkeypatch.setattr(sv, "features", spy)
    cfg = SeLaViConfig(store=str(framed[0]), out=str(tmp_path / "s"), heads=4, head_groups=2, clusters=4, epochs=1,
                       batch_size=32, label_updates=1, dim=16, end_to_end_video="resnet18", video_frames=2,
                       frame_size=32, crop_size=20, augment="crop,flip", loader_workers=0)
    train(cfg, progress=False)
    assert len(passes) >= 2 and not torch.equal(passes[0], passes[1])  # two passes, other crops
    with pytest.raises(ValueError, match="--head-groups 5: give 1 to --heads 4"):
        train(SeLaViConfig(**{**cfg.__dict__, "head_groups": 5, "out": str(tmp_path / "t")}), progress=False)


def test_xdc_resumes_at_iteration_boundaries(stores, tmp_path):
    base = dict(store=str(stores["classes"]), clusters=4, epochs=1, batch_size=32, pca=0)
    full = train(XDCConfig(out=str(tmp_path / "full"), iterations=3, **base), progress=False)
    train(XDCConfig(out=str(tmp_path / "cut"), iterations=2, **base), progress=False)
    resumed = train(XDCConfig(out=str(tmp_path / "cut"), iterations=3, resume=True, **base), progress=False)
    assert full["metrics"] == resumed["metrics"]
    assert (tmp_path / "full" / "labels.csv").read_text() == (tmp_path / "cut" / "labels.csv").read_text()


def killed_at(monkeypatch, step: int, cfg) -> None:
    """Train ``cfg`` until ``step`` starts, then a KeyboardInterrupt: a kill between two checkpoints."""
    import trainers.train

    real = trainers.train.check_finite

    def dies(loss, s, store):
        if s == step:
            raise KeyboardInterrupt
        real(loss, s, store)

    monkeypatch.setattr(trainers.train, "check_finite", dies)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(trainers.train, "check_finite", real)


def test_xdc_iterations_end_when_the_held_out_loss_stops_falling(stores, tmp_path, monkeypatch):
    """--held-out 0.25 --patience 1: after each epoch the heads' loss on clips never trained on; an iteration
    ends at the first epoch that does not lower it (or after --epochs), the run after --iterations; a run killed
    inside resumes to the same weights, its decisions included."""
    base = dict(store=str(stores["classes"]), clusters=4, epochs=8, batch_size=16, pca=0, iterations=2,
                held_out=0.25, patience=1, checkpoint_every=3, loader_workers=0, log_every=1000)
    full = train(XDCConfig(out=str(tmp_path / "full"), **base), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = 144 // 16  # 192 clips, 48 held out
    ends = [r for r in rows if "held_out_loss" in r]
    losses = [r["held_out_loss"] for r in ends]
    assert ends and all(r["step"] % per_epoch == 0 for r in ends)
    relabels = [r["step"] for r in rows if "clusters_v" in r]
    assert relabels[0] == 0 and len(relabels) == 2  # two iterations
    first = [r for r in ends if r["step"] <= relabels[1]]  # iteration 0: falls, then one epoch without a fall
    assert first[-1]["step"] == relabels[1] and (len(first) == 8 or first[-1]["held_out_loss"] >= min(
        x["held_out_loss"] for x in first[:-1]))
    assert full["steps"] == ends[-1]["step"] < 2 * 8 * per_epoch  # ended early, on the held-out loss
    assert all(np.isfinite(losses))
    killed_at(monkeypatch, relabels[1] + 4, XDCConfig(out=str(tmp_path / "cut"), **base))
    resumed = train(XDCConfig(out=str(tmp_path / "cut"), resume=True, **base), progress=False)
    assert resumed["steps"] == full["steps"] and full["metrics"] == resumed["metrics"]
    assert (tmp_path / "full" / "model.pt").read_bytes() == (tmp_path / "cut" / "model.pt").read_bytes()
    with pytest.raises(ValueError, match="give --epochs"):
        train(XDCConfig(out=str(tmp_path / "x"), **{**base, "steps": 100}), progress=False)


def test_xdc_resumes_inside_an_iteration_to_the_same_weights(stores, tmp_path, monkeypatch):
    """An iteration is an epoch of the whole dataset: a run killed inside one resumes from its last
    --checkpoint-every step (heads, their optimiser, the labels), not from the iteration's start."""
    import trainers.methods.xdc
    import trainers.train

    base = dict(store=str(stores["classes"]), clusters=4, epochs=2, batch_size=16, pca=0, iterations=2, checkpoint_every=2,
                loader_workers=0)
    full = train(XDCConfig(out=str(tmp_path / "full"), **base), progress=False)
    per_iteration = 2 * (192 // 16)
    killed_at(monkeypatch, per_iteration + 4, XDCConfig(out=str(tmp_path / "cut"), **base))  # step 5 of iteration 1
    relabel_calls = []
    real_relabel = trainers.methods.xdc.relabel
    monkeypatch.setattr(trainers.methods.xdc, "relabel", lambda *a: relabel_calls.append(a[-1]) or real_relabel(*a))
    resumed = train(XDCConfig(out=str(tmp_path / "cut"), resume=True, **base), progress=False)
    assert relabel_calls == []  # iteration 1's labels came from the checkpoint at its step 4
    assert full["metrics"] == resumed["metrics"]

    def log(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "input_wait")} for r in rows]
    # every --log-every (10) steps, the last, and each relabelling (steps 0 and 24) with its NMI to the last one
    assert [r["step"] for r in log("full")] == [0, 10, 20, 24, 30, 40, 47]
    assert "nmi_prev_v" in log("full")[3] and "clusters_a" in log("full")[0]
    assert log("full") == log("cut")
    for name in ("labels.csv", "model.pt"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mmv", "xdc", "selavi"])
def test_every_method_trains_the_end_to_end_audio_tower_on_real_speech(method, tmp_path, monkeypatch, device):
    """--end-to-end-audio for MMV, XDC and SeLaVi: DAVEnet on the cached log-mel of real recordings (FSDD) is
    trained under each method's own head and loss, and `trainers eval` embeds and scores the run (clustering of
    each modality for the pseudo-label methods, which align no spaces). That they learn: benchmarks/learn_speech.py."""
    from pathlib import Path

    import trainers.towers
    from features.davenet import DAVEnet
    from synthetic import recordings, speech_store
    from trainers.evaluate import load_run

    made = []

    class Recorded(DAVEnet):  # keeps the tower's initial weights
        def __init__(self):
            super().__init__()
            made.append({k: v.clone() for k, v in self.state_dict().items()})

    monkeypatch.setattr(trainers.towers, "DAVEnet", Recorded)
    fsdd = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
    store = str(speech_store(tmp_path / "s.zarr", recordings(fsdd, range(0, 2)), 16, clips_per_video=2, lead=0.1))
    out = str(tmp_path / method)
    common = dict(store=store, out=out, end_to_end_audio=True, audio_frames=128, batch_size=16, loader_workers=0,
                  device=device)
    cfg = {"mmv": lambda: MMVConfig(**common, steps=4, warmup=1, candidates=1, dim_va=16, dim_vat=8, text_dim=16),
           "xdc": lambda: XDCConfig(**common, clusters=4, iterations=2, pca=0, dim=16),
           "selavi": lambda: SeLaViConfig(**common, clusters=4, heads=2, epochs=2, label_updates=2, dim=16)}[method]()
    {"mmv": train, "xdc": train, "selavi": train}[method](cfg, progress=False)
    _, _, model = load_run(out)
    tower = [m for m in model.modules() if isinstance(m, DAVEnet)]
    assert len(tower) == 1 and len(made) == 2  # the run's, and the one load_run built
    trained = tower[0].state_dict()
    assert any(not torch.equal(trained[k], made[0][k]) for k in trained if trained[k].is_floating_point())
    r = evaluate(out, store, label="digit")
    assert r["clips"] == 32 and any(k.startswith("digit/") for k in r["clustering"])


@pytest.mark.parametrize("warmup", [0, 20])
def test_selavi_first_labels_see_batchnorm_statistics_of_the_data(stores, tmp_path, monkeypatch, warmup):
    """SeLaVi's warmup_batchnorm: the first, eval-mode label pass runs on BatchNorm running statistics of the
    data, so each modality's encoder output has the unit scale its final BatchNorm gives it in training. At
    their initial (0, 1) the scales follow the raw inputs instead (here the video encoder's outputs have std 0.03
    and the audio's 0.18), and the joint p_v * p_a follows whichever modality happens to be larger."""
    import trainers.methods.selavi

    scales = []
    real = trainers.methods.selavi.features

    def first_pass(model, clips, cfg, rng=None):
        feats = real(model, clips, cfg, rng)
        scales.append({m: float(x.std(0).mean()) for m, x in feats.items()})
        return feats

    monkeypatch.setattr(trainers.methods.selavi, "features", first_pass)
    train(SeLaViConfig(store=str(stores["classes"]), out=str(tmp_path / "s"), heads=1, clusters=4, epochs=1,
                              batch_size=8, label_updates=1, bn_warmup=warmup, loader_workers=0), progress=False)
    first = scales[0]
    if warmup:
        assert all(0.7 < s < 1.3 for s in first.values()), first
    else:  # what the warm-up is for: far from the training-mode scale
        assert not all(0.7 < s < 1.3 for s in first.values()), first
