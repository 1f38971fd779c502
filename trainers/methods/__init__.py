"""The registry of methods: each module in this folder defines one Method subclass and registers it, so a new
method is one new file here (the CLI, evaluation and the tests find it by name)."""
from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: ``cls.name`` becomes `trainers <name>`."""
    _REGISTRY[cls.name] = cls
    return cls


def methods() -> dict[str, type]:
    """Every method, by name (importing each module of this package once)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(_REGISTRY)


def method_of(cfg):
    """The Method class whose Config ``cfg`` is."""
    for cls in methods().values():
        if type(cfg) is cls.Config:
            return cls
    raise ValueError(f"no method takes a {type(cfg).__name__}")
