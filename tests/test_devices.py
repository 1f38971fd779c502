"""Every trainer in one small run: what it computes in on each device (its towers in bf16 autocast on CUDA,
fp32 on a CPU; its weights, optimiser and losses in fp32 on both), and what its log says of its input."""
import json
import time

import pytest
import torch
from torch import nn

from trainers.methods import methods
from trainers.train import train

METHODS = sorted(methods())  # every registered method, a new one included
# small sizes per method; a method not named here runs from its defaults with the generic small sizes below
SMALL = {"mcn": dict(combo="va+all", clips_per_video=4, warmup=1, min_time=0.0, clusters=4,
                     cluster_every=2, queue_steps=1),
         "mmv": dict(warmup=1, dim_va=16, dim_vat=8, text_dim=16),
         "xdc": dict(clusters=4, iterations=1, epochs=1, pca=0),
         "selavi": dict(heads=1, clusters=4, epochs=1, label_updates=1)}
GENERIC = dict(steps=4, batch_size=32, dim=16, log_every=2)


def tiny_run(method: str, store, out, **kw) -> None:
    """A few steps of ``method`` on a planted store (``kw``: flags every trainer has)."""
    cls = methods()[method].Config
    small = {k: v for k, v in GENERIC.items() if k in cls.__dataclass_fields__} | SMALL.get(method, {})
    if method in ("xdc", "selavi"):  # their length is set by --epochs here
        small.pop("steps")
    train(cls(store=str(store), out=str(out), **small | kw), progress=False)


@pytest.mark.parametrize("method", METHODS)
def test_towers_run_in_bf16_on_a_gpu_and_fp32_on_a_cpu(method, device, stores, tmp_path):
    seen = {}

    def record(module, args, output):
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and isinstance(output, torch.Tensor):
            seen[output.dtype] = seen.get(output.dtype, 0) + 1
            assert output.device.type == device

    hook = nn.modules.module.register_module_forward_hook(record)
    try:
        tiny_run(method, stores["classes"], tmp_path / method, device=device)
    finally:
        hook.remove()
    if device == "cuda":  # the pseudo-label methods' small heads run on the fp32 encoder outputs, outside it
        assert seen.get(torch.bfloat16, 0) > 0 and (method in ("xdc", "selavi") or set(seen) == {torch.bfloat16}), seen
    else:
        assert set(seen) == {torch.float32}, seen
    state = torch.load(tmp_path / method / "model.pt", map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    ckpt = torch.load(tmp_path / method / "checkpoint.pt", map_location="cpu", weights_only=True)
    moments = [t for opt in ckpt["opt"] for s in opt["state"].values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in moments)


@pytest.mark.parametrize("method", METHODS)
def test_every_trainer_logs_the_share_of_time_it_waited_for_batches(method, stores, tmp_path, monkeypatch):
    """`input_wait` in metrics.jsonl: the share of wall time a trainer spent waiting for its loader. A store
    that takes 0.5 s to form each batch (in-process loading) makes it most of the time."""
    from trainers.loader import StepBatches

    form = StepBatches.__getitem__

    def slow(self, step):
        time.sleep(0.5)
        return form(self, step)

    monkeypatch.setattr(StepBatches, "__getitem__", slow)
    tiny_run(method, stores["classes"], tmp_path / method, loader_workers=0)
    rows = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    shares = [r["input_wait"] for r in rows]
    assert all(0 <= s <= 1 for s in shares) and max(shares) > 0.5, shares


@pytest.mark.parametrize("method", ["mcn", "xdc", "selavi"])
def test_every_trainer_draws_its_augmentation_from_the_run_seed(method, framed, tmp_path, monkeypatch):
    """The crops and flips of end-to-end video are a function of (--seed, step): the same seed draws the same
    crops, another seed others. The clips of every step are pinned to 0..B-1 here, so only the augmentation
    can differ (XDC and SeLaVi drew theirs from seed 0 whatever --seed said, the same every epoch)."""
    import numpy as np

    from trainers.loader import StepBatches

    form, seen = StepBatches.__getitem__, []

    def pinned(self, step):
        if self.sample.__class__.__name__ == "function":  # SeLaVi's BatchNorm warm-up, if any: not training
            return form(self, step)
        sample = self.sample
        self.sample = lambda reader, s: np.arange(len(sample(reader, s)))
        try:
            b = form(self, step)
        finally:
            self.sample = sample
        seen.append((step, b["video"].tobytes()))
        return b

    monkeypatch.setattr(StepBatches, "__getitem__", pinned)
    e2e = dict(end_to_end_video="resnet18", video_frames=2, frame_size=32, crop_size=20, augment="crop,flip",
               loader_workers=0)
    crops = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        seen.clear()
        tiny_run(method, framed[0], tmp_path / name, seed=seed, **e2e)
        crops[name] = list(seen)
    assert len(crops["a"]) >= 2 and len({v for _, v in crops["a"]}) == len(crops["a"])  # each step its own draws
    assert crops["a"] == crops["b"]
    assert all(x != y for (_, x), (_, y) in zip(crops["a"], crops["c"])), "seed 2 drew seed 1's crops"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA device")
def test_a_run_that_cannot_start_says_why_and_leaves_no_run_folder(stores, tmp_path, capsys):
    """--device cuda without a GPU, or a store that is not there: one line naming the fix, exit 2, no traceback,
    and no empty --out folder left behind (for every method)."""
    from trainers.cli import main

    for method in METHODS:
        assert main([method, "--store", str(stores["classes"]), "--out", str(tmp_path / method), "--device", "cuda",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "0 visible CUDA device(s)" in err and "--device cpu" in err and "Traceback" not in err, err
        assert not (tmp_path / method).exists()
        assert main([method, "--store", str(tmp_path / "nowhere.zarr"), "--out", str(tmp_path / method)]) == 2
        assert "no feature store" in capsys.readouterr().err and not (tmp_path / method).exists()


@pytest.mark.parametrize("method,field,value", [("mcn", "recon_targets", "detach"), ("mmv", "graph", "fan"),
                                                ("xdc", "variant", "xcd"), ("selavi", "distribution", "normal")])
def test_a_choice_outside_its_literal_is_refused_naming_the_flag(method, field, value):
    """Configs built in code (or from a config.json) check their choices as the CLI does, in one place."""
    from trainers.methods import methods

    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} '{value}': choose "):
        methods()[method].Config(store="s", out="o", **{field: value})
