"""docs/adding-a-method.md's example method, loaded from the document itself: one file registers a method
that `trainers --help` lists, that trains through the one loop, resumes to the same weights, repeats from its
config.json and is scored by `trainers eval`, with no other file touched."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

import trainers.methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """The example's module, imported from a file holding the document's code block; registered for this test
    only."""
    code = re.search(r"<!-- example-method -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert code, "docs/adding-a-method.md lost its example-method block"
    path = tmp_path / "pair.py"
    path.write_text(code.group(1))
    monkeypatch.setattr(trainers.methods, "_REGISTRY", dict(trainers.methods._REGISTRY))
    spec = importlib.util.spec_from_file_location("pair_example", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "pair_example", module)
    spec.loader.exec_module(module)
    return module


def test_the_example_loss_is_infonce_by_hand(pair):
    z = {"v": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "a": torch.tensor([[1.0, 0.0], [0.6, 0.8]])}
    method = pair.PairMethod(pair.PairConfig(store="", out="", temperature=0.5))
    # logits = v.a / 0.5: [[2, 1.2], [0, 1.6]]; rows: -log softmax at the diagonal, columns likewise
    row = [-torch.log_softmax(torch.tensor([2.0, 1.2]), 0)[0], -torch.log_softmax(torch.tensor([0.0, 1.6]), 0)[1]]
    col = [-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0], -torch.log_softmax(torch.tensor([1.2, 1.6]), 0)[1]]
    want = (sum(row) / 2 + sum(col) / 2) / 2
    assert torch.allclose(method.loss(z, {}, 0)["loss"], want)


def test_a_method_is_one_file(pair, stores, tmp_path, capsys):
    from trainers.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "pair" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pair", "--help"])
    assert "softmax temperature on cosine similarities (default 0.1)" in " ".join(capsys.readouterr().out.split())

    run, flags = tmp_path / "pair", ["--store", str(stores["train"]), "--steps", "40", "--batch-size", "32",
                                     "--loader-workers", "0", "--checkpoint-every", "20", "--no-progress"]
    assert main(["pair", "--out", str(run), *flags]) == 0
    assert main(["eval", "--run", str(run), "--store", str(stores["eval"])]) == 0
    r = json.loads((run / "eval.json").read_text())["retrieval"]["a->v"]
    assert r["R@1"] > 4 * r["chance R@1"], r  # it learnt: audio finds its own clip's video

    # the same run again from its config.json, into another folder: the same weights
    assert main(["pair", "--config", str(run / "config.json"), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    assert (run / "model.pt").read_bytes() == (tmp_path / "again" / "model.pt").read_bytes()
    # a flag beside --config overrides it
    assert main(["pair", "--config", str(run / "config.json"), "--out", str(tmp_path / "seed2"), "--seed", "2",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "seed2" / "config.json").read_text())["seed"] == 2
    assert (run / "model.pt").read_bytes() != (tmp_path / "seed2" / "model.pt").read_bytes()
    # stopped at step 20 (its last checkpoint), then resumed to 40: the uninterrupted run's weights
    assert main(["pair", "--out", str(tmp_path / "cut"), *flags, "--steps", "20"]) == 0
    assert main(["pair", "--out", str(tmp_path / "cut"), *flags, "--resume"]) == 0
    assert (run / "model.pt").read_bytes() == (tmp_path / "cut" / "model.pt").read_bytes()
