"""Optional dependencies, each named by the extra that installs it: a feature that needs one says so in one
line (`pip install 'mmcache[ffmpeg]'`) instead of failing on an import deep inside."""
from __future__ import annotations

import importlib

EXTRAS = {"ffmpeg": "ffmpeg", "imageio_ffmpeg": "ffmpeg", "transformers": "hf", "h5py": "h5",
          "pyarrow": "parquet", "pyarrow.parquet": "parquet", "bokeh": "dashboard", "upath": "cloud"}


class MissingExtra(ImportError):
    pass


def require(module: str, what: str):
    """``module`` imported, or a one-line MissingExtra naming ``what`` needs it and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module, module)
        raise MissingExtra(f"{what} needs {module.split('.')[0]}, which mmcache installs as an extra: "
                           f"pip install 'mmcache[{extra}]' ({e})") from None
