"""The store's layout: format version, unit names, rates of the built-in groups, usable statuses; the errors;
atomic JSON metadata; the Zarr group skeleton. Every other store module builds on this one."""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

FORMAT_VERSION = 2
PART = "p{:06d}"
TMP_PREFIX = ".tmp-"
CLIP_CHUNK = 1 << 16  # rows per chunk of the per-clip columns
# the first axis of the arrays of a unit (parts, status, videos), by array name; every other: one per video.
# Later axes are <array>_<i>. Zarr's dimension_names: xarray.open_zarr reads every group of a store
UNIT_AXES = {"data": "row", "bytes": "byte", "offsets": "video_edge", "clip_offsets": "video_edge"}


def dimension_names(name: str, ndim: int, first: str) -> tuple[str, ...]:
    return (first, *(f"{name}_{i}" for i in range(1, ndim)))


def provenance_differences(a: dict, b: dict, recorded_only: bool = False) -> list[str]:
    """'key: a -> b' for each key of a group's provenance that differs (extractor, weights, random init;
    ``params`` key by key). ``recorded_only``: only the keys ``a`` records (a planted or imported record that
    lacks one cannot be compared)."""
    out = []
    for k in ("extractor", "weights_sha256", "random_init"):
        if a.get(k) != b.get(k) and not (recorded_only and a.get(k) is None):
            out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    pa, pb = a.get("params") or {}, b.get("params") or {}
    keys = sorted(pa) if recorded_only else sorted(set(pa) | set(pb))
    return out + [f"params.{k}: {pa.get(k)!r} -> {pb.get(k)!r}" for k in keys if pa.get(k) != pb.get(k)]


# per-video statuses whose rows trainers read ('truncated': the part of the file before it broke off)
USABLE = ("ok", "truncated")
GROUP_JSON = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class StoreError(ValueError):
    """The path is not a usable feature store (missing, another format, damaged)."""


class DiskFull(StoreError):
    """The disk filled up while writing; what was being written is removed, finished units are kept."""


@contextmanager
def scratch(tmp: Path, what: Path):
    """Around writing the temporary ``tmp`` (file or folder) for ``what``: on any failure ``tmp`` is removed,
    and a full disk becomes one DiskFull line instead of a traceback from deep inside Zarr."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = next(p for p in Path(what).absolute().parents if p.exists())
            raise DiskFull(f"disk full while writing {what} ({shutil.disk_usage(where).free / 1e6:.0f} MB free "
                           f"there): free space or move the store, then rerun the same command; every unit "
                           "finished before is kept and the run resumes") from None
        raise


def damaged(path: Path, what: str) -> StoreError:
    """A StoreError for damaged data at ``path``, naming the store to verify."""
    root = next((p for p in path.parents if "mmcache" in attributes_of(p)), "STORE")
    return StoreError(f"{path}: {what}; the store is damaged: `pipeline verify --store {root} --repair` lists "
                      "and removes every damaged unit for `pipeline extract` to recompute")


def attributes_of(folder: Path) -> dict:
    try:
        return json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def read_json(path: Path) -> dict:
    """A Zarr metadata file; a damaged one is named in the error."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({e}); `pipeline extract` with --retry-failed or a new --store "
                         "rebuilds it") from None


def write_json(path: Path, value: dict) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with scratch(tmp, path):
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)


def ensure_group(path: str | os.PathLike) -> None:
    """Make ``path`` a Zarr v3 group if it is not one yet (atomic, safe with concurrent writers)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "zarr.json", GROUP_JSON)
