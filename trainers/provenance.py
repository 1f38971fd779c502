"""What a run was made from -- the code, the machine, the store and the features it read -- and whether a store
it is scored on was extracted the same way.

A run records, per group it read, the provenance the store holds (extractor, weights SHA-256, random init,
preprocessing params). `trainers eval`, `probe` and `crosstask` compare it with the store they score on: another
ResNet checkpoint, precision or word2vec file changes what the features mean, and is refused naming the keys
that differ unless ``--allow-other-features`` is given (the results then list them).
"""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

from features.base import LOGMEL
from pipeline.store import provenance_differences
from pipeline.store.location import canonical

from .clips import ClipSpec

KEYS = ("extractor", "weights_sha256", "random_init", "params")


def spec_groups(spec: ClipSpec) -> list[str]:
    """The store groups a reader of ``spec`` reads."""
    out = []
    if "v" in spec.modalities:
        out += [spec.frames_group] if spec.frames_group else list(spec.video_groups)
    if "a" in spec.modalities:
        out.append(LOGMEL if spec.end_to_end_audio else spec.audio_group)
    if "t" in spec.modalities or spec.candidates:
        out.append(spec.text_tokens or spec.text_embedding or "word2vec")
    return out


def input_provenance(store, groups) -> dict[str, dict]:
    """{group: its recorded provenance} of ``groups`` in ``store`` (a FeatureStore)."""
    return {g: {k: store.groups.get(g, {}).get(k) for k in KEYS} for g in groups}


def differences(trained: dict[str, dict], store) -> list[str]:
    """'group.key: trained -> now' for every key the training store recorded that differs (``params`` key by
    key). A key the training store did not record (a planted or imported store) cannot be compared: skipped."""
    now = input_provenance(store, trained)
    return [f"{g}.{d}" for g, was in trained.items() for d in provenance_differences(was, now[g], recorded_only=True)]


def check_inputs(raw: dict, store, allow: bool = False) -> list[str]:
    """The differences between the features run config ``raw`` was trained on and ``store``'s; refused
    (ValueError naming them) unless ``allow``. A run from before runs recorded them: not checked, []."""
    trained = raw.get("inputs")
    if not trained:
        return []
    diffs = differences(trained, store)
    if diffs and not allow:
        shown = "; ".join(diffs[:6]) + (f"; ... {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(f"{store.path} was extracted differently from the store this run trained on ({shown}): "
                         "its scores would not measure the run; extract it with the training store's weights and "
                         "settings, or pass --allow-other-features to score anyway (the results then list these)")
    return diffs


def code_and_machine(device: str) -> dict:
    """mmcache's version and git commit (when run from a checkout: "+dirty" with uncommitted changes), Python,
    torch, CUDA and the device: what a results table needs to name the code that made it."""
    import importlib.metadata

    import torch

    root = Path(__file__).resolve().parents[1]
    commit = ""
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    try:
        version = importlib.metadata.version("mmcache")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    cuda = torch.version.cuda if device.startswith("cuda") else None
    return {"mmcache": version, "git": commit or None, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": cuda,
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or
            platform.machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def store_record(store) -> dict:
    """The training store as a results table cites it: its path, plan checksum and size."""
    return {"path": canonical(store.path), "plan_sha256": store.meta.get("plan_sha256"),
            "videos": store.n_videos, "clips": store.n_clips}
