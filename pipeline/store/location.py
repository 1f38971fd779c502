"""Where a store is read from: a local folder, or an fsspec URL (``s3://``, ``gs://``, ``memory://``...) holding a
store synced there after a local extraction. A local path stays a ``pathlib.Path`` (chunk files memory-mapped);
a URL becomes a universal-pathlib ``UPath`` (the ``[cloud]`` extra; each chunk read whole, once), and Zarr opens
it through fsspec. Credentials and endpoints come from the filesystem's usual settings (for S3: the AWS_*
environment variables or ~/.aws, e.g. AWS_ENDPOINT_URL for MinIO or any S3-protocol server)."""
from __future__ import annotations

import os
from pathlib import Path


def is_url(path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def locate(path):
    """``path`` as the read side uses it: a Path for a local folder (``file://`` URLs too), a UPath for a URL."""
    if isinstance(path, Path) or hasattr(path, "fs"):  # already located (a UPath carries its filesystem)
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if not is_url(text):
        return Path(text)
    from features.optional import require

    return require("upath", f"reading a store at {text}").UPath(text)


def canonical(path) -> str:
    """One spelling per store: a local folder absolute with links resolved, a URL as written."""
    where = locate(path)
    return str(where.resolve()) if is_local(where) else str(where)


def is_local(path) -> bool:
    return isinstance(path, Path)


def zarr_location(path):
    """What ``zarr.open_*`` takes for ``path``: the folder, or a read-only fsspec store."""
    if is_local(path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=True)


def walk(path):
    """(folder, subfolder names, file names) at and under ``path``, top-down; clearing the subfolder names
    prunes the walk (os.walk for a local folder, the filesystem's walk for a URL)."""
    if is_local(path):
        for folder, dirs, files in os.walk(path):
            yield Path(folder), dirs, files
        return
    base = path.path.rstrip("/")
    for root, dirs, files in path.fs.walk(base):
        rel = root.rstrip("/")[len(base):].lstrip("/")
        yield (path / rel if rel else path), dirs, files
