"""Every feature group by name: adding an extractor is its own file plus one line here."""
from __future__ import annotations

import importlib
import threading

from .base import Extractor, Options

EXTRACTORS = {
    "resnet152": "features.frames:ResNetFrames",
    "frames": "features.jpeg:JPEGFrames",
    "logmel": "features.audio:LogMel",
    "davenet": "features.davenet:DaveNetAudio",
    "r2plus1d_18": "features.clips:VideoClipModel",
    "r3d_18": "features.clips:VideoClipModel",
    "mc3_18": "features.clips:VideoClipModel",
    "s3d": "features.clips:VideoClipModel",
    "mvit_v2_s": "features.clips:VideoClipModel",
    "swin3d_t": "features.clips:VideoClipModel",
    "hf_vision": "features.hf:HFVision",
    "hf_text": "features.hf:HFText",
    "word2vec": "features.text:Word2VecText",
}

_BUILT: dict[tuple[str, Options], Extractor] = {}  # per process: frozen models load once per worker
_BUILDING = threading.RLock()


def extractor_class(name: str) -> type[Extractor]:
    if name not in EXTRACTORS:
        raise KeyError(f"unknown feature group {name!r}; choose from {sorted(EXTRACTORS)}")
    module, cls = EXTRACTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str, opts: Options) -> Extractor:
    """A new extractor of group ``name`` (not cached: the precision probe's throw-away models)."""
    return extractor_class(name)(name, opts)


def extractor(name: str, opts: Options) -> Extractor:
    """The extractor of group ``name`` built from ``opts`` (cached per process; built once when several of a
    worker's tasks ask at the same time)."""
    with _BUILDING:
        if (name, opts) not in _BUILT:
            _BUILT[name, opts] = build(name, opts)
        return _BUILT[name, opts]
