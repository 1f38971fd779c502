"""The one training loop of every method: run folder, seeding, resume, the step, logging, checkpoints.

Top to bottom, in the nanoGPT manner. What differs between MCN, MMV, XDC and SeLaVi is in their Method
(trainers/methods/); nothing here names one. Every batch, augmentation included, is a pure function of
(seed, step), and a checkpoint holds the model, optimisers, schedulers, the method's state and the RNG, so a
resumed run continues exactly as an uninterrupted run would (on a CPU).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from pipeline.processes import start_early
from pipeline.store import FeatureStore

from .loader import step_loader
from .methods import method_of
from .provenance import code_and_machine, input_provenance, spec_groups, store_record
from .run import InputWait, RunDir, autocast, check_finite


def as_fp32(x):
    """Floating tensors in ``x`` (nested dicts, lists, tuples) as fp32: losses are computed in fp32."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: as_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(as_fp32(v) for v in x)
    return x


def check_device(device: str) -> None:
    """One clear line, before anything is written, for a device this machine does not have."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ValueError(f"--device {device!r}: choose cpu or cuda[:N]")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= have:
        raise ValueError(f"--device {device}: this machine has {have} visible CUDA device(s) (torch "
                         f"{torch.__version__}); use --device cpu" + (f" or cuda:0..{have - 1}" if have else ""))


def train(cfg, progress: bool = True) -> dict:
    """Train ``cfg``'s method (its Config dataclass) into ``cfg.out``; returns a summary."""
    method = method_of(cfg)(cfg)
    check_device(cfg.device)
    if cfg.loader_workers:  # the loader workers' server imports while the method sets up (3 s on 2 cores)
        start_early()
    fresh = not Path(cfg.out).exists()
    run = RunDir(cfg)  # refuses an existing run unless --resume, a resume with other settings, a second trainer
    try:
        return _train(cfg, method, run, fresh, progress)
    finally:
        run.close()  # and lets the next trainer of --out in


def _train(cfg, method, run: RunDir, fresh: bool, progress: bool) -> dict:
    from tqdm import tqdm

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    try:
        dims = method.setup()
    except BaseException:  # a bad store or flag: no empty run folder is left behind
        if fresh and not any(run.path.iterdir()):
            run.path.rmdir()
            run.path.with_name(f".{run.path.name}.lock").unlink(missing_ok=True)
        raise
    model, dev = method.model, cfg.device

    step = 0
    if (state := run.load()) is not None:
        if "method" not in state:
            raise ValueError(f"{run.ckpt} was written by an older mmcache, before the one training loop: finish "
                             "that run with the version that started it, or start a new --out")
        method.load_state_dict(state["method"])
        model.load_state_dict(state["model"])
        for o, s in zip(method.optimizers, state["opt"]):
            o.load_state_dict(s)
        for sch, s in zip(method.schedulers, state["sched"]):
            sch.load_state_dict(s)
        torch.set_rng_state(state["rng"])  # dropout draws from it: the same draws after the resume
        step = int(state["step"])
    run.open_log(step)
    store = FeatureStore(cfg.store)
    inputs = input_provenance(store, spec_groups(method.spec))  # what eval stores must match
    run.write_config(cfg, method=method.name, **dims, inputs=inputs,
                     provenance={**code_and_machine(cfg.device), "store": store_record(store)})
    print(f"{method.describe(step)} (ready in {time.time() - t0:.1f}s)")

    def checkpoint(next_step: int) -> None:
        run.save({"model": model.state_dict(), "opt": [o.state_dict() for o in method.optimizers],
                  "sched": [s.state_dict() for s in method.schedulers], "method": method.state_dict(),
                  "step": torch.tensor(next_step), "rng": torch.get_rng_state()})

    model.train()
    bar = tqdm(total=method.steps, initial=step, disable=not progress, desc="train")
    wait, record = InputWait(), {}
    while step < method.steps:  # a segment: the steps one sampler serves (a relabelling may end it)
        start = step
        record.update(method.schedule(start))  # before the sampler: it may read the new labels
        if start >= method.steps:  # the method ended its run early (XDC's last iteration, on its held-out loss)
            if record:
                run.log({"step": start, **record, "time": round(time.time() - t0, 3)})
            break
        sample, end = method.sampler(start)
        loader = step_loader(cfg.store, method.spec, sample, start, end, cfg.loader_workers, dev.startswith("cuda"),
                             cfg.seed)
        for step, b in zip(range(start, end), wait.wrap(loader)):
            if step > start:
                record.update(method.schedule(step))
            with autocast(dev):
                out = method.forward(b, step)
            terms = method.loss(as_fp32(out), b, step)
            check_finite(terms["loss"], step, cfg.store)
            for o in method.optimizers:
                o.zero_grad(set_to_none=True)
            terms["loss"].backward()
            for o in method.optimizers:
                o.step()
            for s in method.schedulers:
                s.step()
            if step % cfg.log_every == 0 or step == method.steps - 1 or record:
                lr = {"lr": method.schedulers[0].get_last_lr()[0]} if method.schedulers else {}
                run.log({"step": step, **{k: v.item() for k, v in terms.items()}, **lr, **record,
                         "input_wait": wait.share(), "time": round(time.time() - t0, 3)})
                record = {}
            every = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            if every or method.checkpoint_due(step) or step + 1 == method.steps:
                checkpoint(step + 1)
            bar.update()
        step = end
    bar.close()
    run.close_log()
    run.save_model(model.state_dict())
    results = method.finish(run.path)
    return {"steps": method.steps, **results, "seconds": time.time() - t0}
