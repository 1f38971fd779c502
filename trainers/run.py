"""What every trainer's run folder needs: config, atomic checkpoints, a JSONL metric log, the LR schedule."""
from __future__ import annotations

import errno
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .method import RENAMED, check_warmup


# flags a resumed run may change: how it runs, not what it computes (the length extends or shortens the run)
RESUMABLE = {"resume", "loader_workers", "device", "log_every", "checkpoint_every", "steps", "iterations", "epochs"}


class RunDir:
    """<out>/config.json, checkpoint.pt (atomic), metrics.jsonl, model.pt."""

    def __init__(self, cfg):
        self.path = Path(cfg.out)
        self._lock = self._hold(self.path)
        self._log = None
        self._tb = None
        try:
            self._check(cfg)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _hold(path: Path):
        """An exclusive flock beside the run folder (never inside it: a run that cannot start leaves nothing),
        held until close(); released by the OS when the trainer dies."""
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.parent / f".{path.name}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "?"
            f.close()
            raise FileExistsError(f"another trainer (pid {who}) is writing {path}: wait for it to end, or choose "
                                  "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f

    def _check(self, cfg) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt, self.log_path = self.path / "checkpoint.pt", self.path / "metrics.jsonl"
        if (self.ckpt.exists() or self.log_path.exists()) and not cfg.resume:
            raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it or choose a new --out")
        if cfg.resume and (self.path / "config.json").exists():
            saved = {RENAMED.get(k, k): v for k, v in json.loads((self.path / "config.json").read_text()).items()}
            new = asdict(cfg)
            changed = {k: (saved[k], v) for k, v in new.items() if k not in RESUMABLE and k in saved and saved[k] != v}
            if changed:
                raise ValueError(f"--resume of {self.path} with other settings than it was trained with: " +
                                 ", ".join(f"--{k.replace('_', '-')} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                                 + "; resume with the same flags, or start a new --out")
        self.resume = cfg.resume

    def _atomic(self, path: Path, write) -> None:
        """``write(tmp)`` then one rename: a kill or a full disk mid-write leaves the previous file intact."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise OSError(e.errno, f"disk full while writing {path}: the previous {path.name} is intact; free "
                                       "space and rerun with --resume") from None
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_config(self, cfg, **extra) -> None:
        text = json.dumps({**asdict(cfg), **extra}, indent=1)
        self._atomic(self.path / "config.json", lambda tmp: tmp.write_text(text))

    def load(self) -> dict | None:
        if self.resume and self.ckpt.exists():
            return torch.load(self.ckpt, map_location="cpu", weights_only=True)
        return None

    def save(self, state: dict) -> None:
        self._atomic(self.ckpt, lambda tmp: torch.save(state, tmp))  # a crash mid-save keeps the previous one

    def save_model(self, state: dict) -> None:
        self._atomic(self.path / "model.pt", lambda tmp: torch.save(state, tmp))

    def open_log(self, step: int) -> None:
        """Drop log lines at or past ``step`` (a resumed run recomputes them identically), then append."""
        if self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
            self.log_path.write_text("".join(ln + "\n" for ln in lines))
        self._log = open(self.log_path, "a")
        try:  # TensorBoard too, when it is installed
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tensorboard"), purge_step=step)
        except ImportError:
            self._tb = None

    def log(self, record: dict) -> None:
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def close(self) -> None:
        """The log, and the lock on the run folder (idempotent)."""
        self.close_log()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class NonFiniteLoss(ValueError):
    pass


def check_finite(loss: torch.Tensor, step: int, store: str) -> None:
    """Stop before a nan/inf loss reaches the weights (the last checkpoint stays good)."""
    if not torch.isfinite(loss).item():
        raise NonFiniteLoss(
            f"loss is {loss.item()} at step {step}: stopped before it reached the weights (the last checkpoint "
            f"is intact). Damaged features read as garbage: `pipeline verify --store {store}` checks every chunk; "
            "if the store is sound, lower --lr")


class InputWait:
    """The share of wall time spent waiting for batches since the last ``share()`` (logged as ``input_wait``):
    ~0 when the loader workers keep up; near 1 when every step waits on the store (raise --loader-workers)."""

    def __init__(self):
        self.waited, self.since = 0.0, time.perf_counter()

    def wrap(self, batches):
        t = time.perf_counter()
        for b in batches:
            self.waited += time.perf_counter() - t
            yield b
            t = time.perf_counter()

    def share(self) -> float:
        now = time.perf_counter()
        out, self.waited, self.since = self.waited / max(now - self.since, 1e-9), 0.0, now
        return round(out, 3)


def autocast(device) -> torch.autocast:
    """Every trainer's forward: bf16 autocast on CUDA; fp32 on a CPU, where bf16 is emulated and slower unless
    the CPU has it natively (and then the trainers' small heads gain little). Losses are computed in fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))


def warmup_cosine(warmup: int, total: int):
    """LR multiplier: linear warm-up step/warmup (MCN's: the first update runs at lr 0), then half-cosine to 0
    at ``total``."""
    check_warmup(warmup, total)

    def f(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f
