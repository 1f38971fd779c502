"""The Zarr feature store: layout, atomic writes and the lazy read API.

    store.zarr/                  a Zarr v3 group all the way down (README: "Store layout")
      zarr.json                  attrs: mmcache (version, plan checksum, part size, counts), per-group provenance
      problems                   every bad manifest/caption row found while planning (strings)
      videos/                    video_id, path, part, clip_offsets (n+1), label_<col>     (one row per video)
      clips/                     video, start, end, text, label_<col>   (one row per clip, grouped by video,
                                 chunked: clips of video i are rows clip_offsets[i]:clip_offsets[i+1])
      word2vec/                  ids + offsets per clip, status, ok_per_video, vocab_rows, vectors
      parts/p000000/<group>/     data (rows, dim) float16, offsets (videos+1), status, error, duration
      status/<group>/            every video's status in one place (rewritten after each extraction)

Every unit under ``parts/`` (and ``word2vec/``, ``status/``) is written to a temporary directory and
committed by one ``os.rename``: a unit exists whole or not at all, so a killed run never leaves a partial
video behind, and a rerun only computes units that are missing. Opening a store reads one small JSON file;
per-video columns load on first use (~1.2M rows at HowTo100M size), per-clip columns are only ever read
for the clips asked for.
"""
from .columns import ColumnWriter
from .layout import (CLIP_CHUNK, FORMAT_VERSION, PART, TMP_PREFIX, USABLE, DiskFull, StoreError, ensure_group,
                     provenance_differences, read_json, scratch, write_json)
from .lock import StoreLock, add_groups, clean_temporaries, record_failed_parts, update_root_attrs
from .reader import FeatureStore, Group, Unit
from .rows import RowReader
from .status import write_status_index
from .text import write_clip_text, write_text
from .units import commit, read_unit, write_part, write_unit

__all__ = ["CLIP_CHUNK", "FORMAT_VERSION", "PART", "TMP_PREFIX", "USABLE", "ColumnWriter", "DiskFull", "FeatureStore",
           "Group", "RowReader", "StoreError", "StoreLock", "Unit", "add_groups", "clean_temporaries",
           "commit", "ensure_group", "provenance_differences", "read_json", "read_unit",
           "record_failed_parts", "scratch", "update_root_attrs", "write_clip_text", "write_json",
           "write_part", "write_status_index", "write_text", "write_unit"]
