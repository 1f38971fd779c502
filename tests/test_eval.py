"""Evaluation protocols beyond `trainers eval`: CrossTask step localisation, runs compared side by side."""
import csv
import json

import numpy as np
import pytest
import torch

from pipeline.store import FeatureStore
from trainers.crosstask import align, crosstask, ground_truth, recall, summarise
from trainers.evaluate import evaluate
from trainers.methods.mcn import MCNConfig
from trainers.train import train


def small(store, out, **kw):
    base = dict(store=str(store), out=str(out), combo="vt", dim=64, videos_per_batch=8, clips_per_video=4,
                steps=150, warmup=10, lr=1e-3, min_time=0.0, clusters=4, cluster_every=10, queue_steps=2,
                checkpoint_every=1000, seed=3)
    return MCNConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory):
    """Two MCN vt runs on the planted store (full loss; MMS alone), each evaluated on the held-out store."""
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for name, flags in (("full", {}), ("mms", dict(no_cluster=True, no_recon=True))):
        train(small(stores["train"], d / name, **flags), progress=False)
        evaluate(d / name, str(stores["eval"]))
        out[name] = d / name
    return out


def test_crosstask_dp_recall_and_averages_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.0, 0.7]])
    np.testing.assert_array_equal(align(scores), [[1, 0], [0, 0], [0, 0], [0, 1]])  # 0.9 + 0.7
    # in order: step 1 cannot come before step 0, even where it scores best
    np.testing.assert_array_equal(align(np.array([[0.0, 9.0], [1.0, 0.0], [0.0, 0.5]])), [[0, 0], [1, 0], [0, 1]])
    y = ground_truth(5, 3, [(0, 0.5, 1.2), (2, 3.0, 4.0)])  # rows floor(start)..ceil(end)-1; step 1 absent
    np.testing.assert_array_equal(y, [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    pred = np.zeros((5, 3), bool)
    pred[[1, 2, 4], [0, 1, 2]] = True  # step 0 inside its segment, step 2 outside, step 1 not annotated
    assert recall(y, pred) == (1, 2)
    # official: (1 + 3) / (2 + 3) per task; MCN: the mean of the videos' recalls (1/2 + 3/3) / 2
    r = summarise({"t": [(1, 2), (3, 3)], "u": [(0, 1)]})
    assert r["tasks"]["t"]["recall"] == pytest.approx(0.8) and r["tasks"]["t"]["recall, per-video mean (MCN)"] == 0.75
    assert r["average recall"] == pytest.approx(0.4) and r["average recall, per-video mean (MCN)"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="cannot hold"):
        align(np.zeros((2, 3)))


def crosstask_store(path, seed: int):
    """Videos of 12 s whose seconds inside each annotated step segment carry the step text's planted video
    features (the stores fixture's mixing), noise elsewhere; the word2vec .bin its texts are tokenised with."""
    from gensim.models import KeyedVectors

    from features.weights import sha256
    from synthetic import write_clip_store

    rng0 = np.random.default_rng(0)  # the stores fixture's words and mixers
    words = rng0.normal(size=(48, 300))
    wv = rng0.normal(size=(300, 64)) / 10
    kv = KeyedVectors(300)
    kv.add_vectors([f"w{i}" for i in range(48)], words.astype(np.float32))
    kv.save_word2vec_format(str(path.parent / "w2v.bin"), binary=True)
    steps = {"bread": [[1, 2, 3], [10, 11, 12], [20, 21, 22]], "bike": [[30, 31, 32], [40, 41, 42], [5, 6, 7]]}
    rng = np.random.default_rng(seed)
    rows, frames, notes = [], [], []
    for v in range(8):
        task = list(steps)[v % 2]
        x = 0.05 * rng.normal(size=(12, 64))
        starts = np.sort(rng.choice([0, 3, 6, 9], 3, replace=False)) + rng.integers(0, 2, 3)
        for k, s0 in enumerate(starts):
            x[s0:s0 + 2] = words[steps[task][k]].mean(0) @ wv + 0.05 * rng.normal(size=(2, 64))
            notes.append([f"v{v}", task, k + 1, float(s0), float(s0 + 2)])
        frames.append(x)
        rows.append([f"v{v}", 0.0, 12.0, "w0", task])
    write_clip_store(path, rows, "task", {"resnet152": frames}, 12.0, [np.array([0], np.int32)] * 8, 48, words,
                     {"resnet152": {"dim": 64, "rate": 1.0},
                      "word2vec": {"dim": 300, "weights": str(path.parent / "w2v.bin"),
                                   "weights_sha256": sha256(path.parent / "w2v.bin")}})
    (path.parent / "steps.json").write_text(json.dumps({t: [" ".join(f"w{w}" for w in s) for s in ss]
                                                        for t, ss in steps.items()}))
    with open(path.parent / "annotations.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "task", "step", "start", "end"], *notes])
    return path


def test_crosstask_localises_planted_steps(runs, tmp_path):
    store = crosstask_store(tmp_path / "ct.zarr", seed=4)
    r = crosstask(runs["full"], str(store), str(tmp_path / "steps.json"), str(tmp_path / "annotations.csv"))
    assert set(r["tasks"]) == {"bread", "bike"} and all(t["videos"] == 4 for t in r["tasks"].values())
    assert r["chance"] < 0.4 and r["average recall"] > 0.8, r  # 3 steps of 2 s in 12 s: chance ~ 1/4
    assert json.loads((runs["full"] / "crosstask.json").read_text())["average recall"] == r["average recall"]
    (tmp_path / "bad.csv").write_text("video_id,task,step,start,end\nv0,bread,4,0,2\n")
    with pytest.raises(ValueError, match="bad.csv line 2: step 4 of 3"):
        crosstask(runs["full"], str(store), str(tmp_path / "steps.json"), str(tmp_path / "bad.csv"))


def test_crosstask_reads_the_official_release_layout(runs, tmp_path, capsys):
    """A hand-made copy of the CrossTask release: tasks_primary.txt, videos_val.csv (no header) and
    annotations/<task>_<video>.csv (step, start, end; no header) give the same recall as our CSV + JSON."""
    from trainers.cli import main

    store = crosstask_store(tmp_path / "ct.zarr", seed=4)
    steps = json.loads((tmp_path / "steps.json").read_text())
    ids = {"bread": "16815", "bike": "23521"}
    rel = tmp_path / "crosstask_release"
    (rel / "annotations").mkdir(parents=True)
    (rel / "tasks_primary.txt").write_text("".join(
        f"{ids[t]}\nMake {t}\nhttps://www.wikihow.com/{t}\n{len(ss)}\n{','.join(ss)}\n\n" for t, ss in steps.items()))
    notes = list(csv.DictReader(open(tmp_path / "annotations.csv")))
    videos = sorted({(r["task"], r["video_id"]) for r in notes})
    (rel / "videos_val.csv").write_text("".join(f"{ids[t]},{v},https://www.youtube.com/watch?v={v}\n"
                                                for t, v in videos) + f"{ids['bike']},unannotated,https://x\n")
    for t, v in videos:
        (rel / "annotations" / f"{ids[t]}_{v}.csv").write_text(
            "".join(f"{r['step']},{r['start']},{r['end']}\n" for r in notes if r["video_id"] == v))
    ours = crosstask(runs["full"], str(store), str(tmp_path / "steps.json"), str(tmp_path / "annotations.csv"))
    official = crosstask(runs["full"], str(store), release=str(rel))
    assert official["average recall"] == ours["average recall"] and set(official["tasks"]) == set(ids.values())
    assert official["max words"] == 30
    assert main(["crosstask", "--run", str(runs["full"]), "--store", str(store), "--release", str(rel)]) == 0
    assert "average recall" in capsys.readouterr().out
    (rel / "annotations" / f"{ids['bike']}_{videos[0][1]}.csv").write_text("9,0,2\n")
    with pytest.raises(ValueError, match="line 1: step 9 of 3"):
        crosstask(runs["full"], str(store), release=str(rel))
    assert main(["crosstask", "--run", str(runs["full"]), "--store", str(store)]) == 2
    assert "--release DIR), or --steps and --annotations" in capsys.readouterr().err


def test_step_texts_read_up_to_max_words(tmp_path):
    from trainers.texts import text_input

    store = crosstask_store(tmp_path / "ct.zarr", seed=4)
    cfg = type("Cfg", (), {"max_words": 20, "end_to_end_text": ""})()
    text = " ".join(f"w{i % 48}" for i in range(40))
    assert text_input(cfg, FeatureStore(store), [text]).shape == (1, 20, 300)
    x = text_input(cfg, FeatureStore(store), [text], max_words=30)
    assert x.shape == (1, 30, 300) and bool((x[0].abs().sum(1) > 0).all())


def test_compare_puts_runs_side_by_side(runs, tmp_path, capsys):
    from trainers.cli import main

    assert main(["compare", str(runs["full"]), str(runs["mms"]), str(tmp_path / "none"),
                 "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "--no-cluster" in out and "--no-recon" in out and "t->v R@1" in out and "chance" in out
    assert "left out (no eval.json" in out
    with open(tmp_path / "cmp.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["run"] for row in table] == ["full", "mms"]
    full = json.loads((runs["full"] / "eval.json").read_text())
    assert float(table[0]["t->v R@1"]) == full["retrieval"]["t->v"]["R@1"]
    assert float(table[1]["steps"]) == 150 and float(table[0]["train s"]) > 0
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "none")]) == 2


def test_probe_accuracy_on_separable_and_random_labels():
    from trainers.probe import probe_accuracy

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    x = x[np.abs(x[:, 0] + x[:, 1]) > 1][:90]  # linearly separable, with a margin
    y = np.where(x[:, 0] + x[:, 1] > 0, "a", "b")
    assert probe_accuracy(x, y)["accuracy"] == 1.0
    test = np.arange(90) % 3 == 0
    assert probe_accuracy(x, y, test=test) == {"accuracy": 1.0, "test clips": 30}
    noise = probe_accuracy(x, rng.choice(["a", "b", "c"], 90))
    assert noise["accuracy"] < 0.55 and noise["folds"] == 5  # chance: 1/3
    with pytest.raises(ValueError, match="too few"):
        probe_accuracy(x, np.array(["a"] + ["b"] * 89))


def test_probe_and_zero_shot_on_exported_embeddings(stores, tmp_path, capsys):
    """Planted classes (each owns 12 of the 48 words its captions draw from): a probe of the trained video
    embeddings finds the class, and so does zero-shot naming each class by its words."""
    from gensim.models import KeyedVectors

    from trainers.cli import main
    from trainers.probe import probe

    train(small(stores["classes"], tmp_path / "run", steps=100), progress=False)
    evaluate(tmp_path / "run", str(stores["classes"]))
    words = np.random.default_rng(0).normal(size=(48, 300)).astype(np.float32)  # the stores fixture's words
    kv = KeyedVectors(300)
    kv.add_vectors([f"w{i}" for i in range(48)], words)
    kv.save_word2vec_format(str(tmp_path / "w2v.bin"), binary=True)
    with open(tmp_path / "names.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "text"], *[[f"c{c}", " ".join(f"w{w}" for w in range(12 * c, 12 * c + 12))]
                                                      for c in range(4)]])
    r = probe(tmp_path / "run", str(stores["classes"]), "task", zero_shot=True,
              class_names=str(tmp_path / "names.csv"), word2vec=str(tmp_path / "w2v.bin"))
    assert r["clips"] == 192 and r["classes"] == 4 and r["features"] == ["vt_v"]
    assert r["chance (largest class)"] == 0.25 and r["linear probe"]["accuracy"] > 0.9, r
    assert r["linear probe, frozen features"]["accuracy"] > 0.9  # the planted features are linear in the class
    assert r["zero-shot"]["chance"] == 0.25 and r["zero-shot"]["accuracy"] > 0.6, r["zero-shot"]
    split = probe(tmp_path / "run", str(stores["classes"]), "task", split="task=c1")
    assert split["linear probe"]["test clips"] == 48 and split["linear probe"]["accuracy"] == 0.0  # c1 never seen
    assert main(["probe", "--run", str(tmp_path / "run"), "--store", str(stores["train"]), "--label", "task"]) == 2
    assert "not " in capsys.readouterr().err  # the export is of another store


def test_pictures_report_and_map(runs, stores, tmp_path):
    from trainers.cli import main

    assert main(["report", "--run", str(runs["full"])]) == 0
    assert (runs["full"] / "losses.png").stat().st_size > 10_000
    for method in ("pca", "tsne"):
        assert main(["map", "--run", str(runs["full"]), "--store", str(stores["eval"]), "--label", "task",
                     "--method", method]) == 0
        assert (runs["full"] / "map-task.png").stat().st_size > 5_000
    assert main(["map", "--run", str(runs["full"]), "--store", str(stores["eval"]), "--label", "nope"]) == 2


@pytest.mark.parametrize("cli", ["pipeline", "trainers"])
def test_every_flag_of_every_command_says_what_it_does(cli):
    """`--help` teaches: every flag of every subcommand has a help text, and one with a default names it."""
    import argparse
    import importlib

    parser = importlib.import_module(f"{cli}.cli").build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flag = f"{cli} {name} {a.option_strings[0] if a.option_strings else a.dest}"
            has_default = a.default not in (None, False, True, [], argparse.SUPPRESS) and not a.required
            if not a.help or (has_default and "default" not in a.help):
                missing.append(flag)
    assert not missing, missing


def test_a_store_extracted_otherwise_is_refused_naming_what_differs(runs, stores, tmp_path, capsys):
    """A held-out store whose ResNet weights or precision differ from the training store's: eval and probe
    refuse it naming the keys; --allow-other-features scores it and the results list them."""
    import shutil

    from pipeline.store import update_root_attrs
    from trainers.cli import main
    from trainers.probe import probe

    raw = json.loads((runs["full"] / "config.json").read_text())
    assert set(raw["inputs"]) == {"resnet152", "word2vec"}  # what the vt run read, as the store recorded it
    other = tmp_path / "other.zarr"
    shutil.copytree(stores["eval"], other)

    def recorded(sha, precision):
        def change(attrs):
            groups = dict(attrs["groups"])
            groups["resnet152"] = {**groups["resnet152"], "weights_sha256": sha, "params": {"precision": precision}}
            attrs["groups"] = groups
            return attrs
        return change

    # what `pipeline extract` records (the planted training store recorded nothing to compare: not checked)
    run = tmp_path / "run"  # a copy: the shared run stays as trained
    shutil.copytree(runs["full"], run)
    raw["inputs"]["resnet152"] = {**raw["inputs"]["resnet152"], "weights_sha256": "a" * 64,
                                  "params": {"precision": "fp32"}}
    (run / "config.json").write_text(json.dumps(raw))
    update_root_attrs(other, recorded("f" * 64, "bf16"))
    with pytest.raises(ValueError, match=r"resnet152.weights_sha256: 'aaa.*' -> 'fff.*resnet152.params.precision: "
                                         r"'fp32' -> 'bf16'.*--allow-other-features"):
        evaluate(run, str(other))
    assert main(["eval", "--run", str(run), "--store", str(other)]) == 2
    assert "extracted differently from the store this run trained on" in capsys.readouterr().err
    r = evaluate(run, str(other), allow_other_features=True)
    assert len(r["features differ from training (--allow-other-features)"]) == 2
    with pytest.raises(ValueError, match="resnet152.weights_sha256"):
        probe(run, str(other), "task")
    assert "features differ" in json.dumps(probe(run, str(other), "task", allow_other_features=True))
    same = tmp_path / "same.zarr"
    shutil.copytree(stores["eval"], same)
    update_root_attrs(same, recorded("a" * 64, "fp32"))
    assert "features differ" not in json.dumps(evaluate(run, str(same)))


def test_exported_embeddings_open_in_xarray(runs):
    xarray = pytest.importorskip("xarray", reason="xarray comes with the [test] extra")
    ds = xarray.open_zarr(str(runs["full"] / "embeddings.zarr"), consolidated=False)
    assert ds["key"].dims == ("clip",) and ds["vt_t"].dims == ("clip", "vt_t_1")
    assert ds.sizes["clip"] == len(ds["vt_v"]) > 0


def test_a_run_names_its_code_store_and_features_and_exports_safetensors_and_a_card(runs, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    from trainers.cli import main

    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    raw = json.loads((run / "config.json").read_text())
    prov = raw["provenance"]
    assert prov["mmcache"] and prov["torch"] and prov["python"] and prov["device"] and prov["started"]
    assert prov["store"]["plan_sha256"] and prov["store"]["clips"] > 0 and raw["inputs"]["resnet152"]
    assert main(["export", "--run", str(run)]) == 0
    weights = load_file(str(run / "model.safetensors"))
    state = torch.load(run / "model.pt", weights_only=True)
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    card = (run / "RUN.md").read_text()
    assert card.startswith("# run: mcn, recipe `ours`")
    assert "| `--combo` | vt | all |" in card and prov["store"]["plan_sha256"] in card  # differs from MCN's
    assert "## Evaluation" in card and "t->v" in card and "| `resnet152` |" in card


def test_flags_that_differ_are_those_within_a_method():
    from trainers.compare import flags_that_differ

    configs = [{"method": "mcn", "dim": 8, "lr": 1, "end_to_end_video": "", "eval store": "e"},
               {"method": "mcn", "dim": 8, "lr": 2, "end_to_end_video": "", "eval store": "e"},
               {"method": "mmv", "dim_va": 4, "lr": 3, "graph": "fac", "eval store": "e"}]
    assert flags_that_differ(configs) == ["method", "lr"]  # mcn's dim and mmv's graph: the same within each
    assert flags_that_differ(configs[:2]) == ["lr"]
