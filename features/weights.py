"""Load frozen weights from a path the user gives, with clear errors and a checksum for the store."""
from __future__ import annotations

import hashlib
import os

import torch


class WeightsError(ValueError):
    pass


def sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Checksum of tensors (used for random-init weights, which have no file)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike, what: str, flag: str) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a state_dict, or of a checkpoint holding one under 'state_dict'/'model'."""
    if not path:
        raise WeightsError(f"{what}: no weights given. Pass {flag} PATH, or --random-init to run it "
                           "untrained (recorded as random-init in the store).")
    if not os.path.isfile(path):
        raise WeightsError(f"{what}: weights file not found: {path} ({flag})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors: say which file and why
        raise WeightsError(f"{what}: cannot load {path} with torch.load(weights_only=True): {e}") from e
    for key in ("state_dict", "model", "audio_model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what}: {path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path) -> None:
    """Load (assign) ``state`` into ``model``, which may live on the meta device (no wasted random init)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{what}: {path} does not match the model: {str(e).splitlines()[1].strip()}") from e
    if missing or unexpected:
        raise WeightsError(f"{what}: {path} does not match the model: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}")
