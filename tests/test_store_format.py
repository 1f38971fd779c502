"""docs/store-format.md against a real store: every array `pipeline extract` writes is in the document's table,
and every array the table names is written (label columns: where the manifest has labels); and every group
opens in xarray (named dimensions)."""
import re
from pathlib import Path

import pytest
import zarr

from pipeline.extract import ExtractConfig, extract
from pipeline.store import FeatureStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"


def documented() -> list[re.Pattern]:
    """The table's array names as patterns: `folder/a`, `b` (b in a's folder); pNNNNNN, <group>, <col>."""
    out = []
    for row in re.findall(r"^\| (`[^|]+) \|", DOC.read_text(), re.M):
        folder = ""
        for name in re.findall(r"`([^`]+)`", row):
            if "/" in name:
                folder = name.rsplit("/", 1)[0]
            else:
                name = f"{folder}/{name}" if folder else name
            pattern = re.escape(name).replace("pNNNNNN", r"p\d{6}").replace("<group>", "[a-z0-9_]+")
            out.append(re.compile(pattern.replace("<col>", ".+") + "$"))
    return out


def test_the_document_names_every_array_of_a_real_store(odd_dataset, weights, tmp_path):
    from synthetic import tiny_text_model

    tiny_text_model(tmp_path / "bert", ["cut", "the", "onion", "knead", "dough", "wheel", "bike", "paint", "wall"])
    store = tmp_path / "s.zarr"
    extract(ExtractConfig(manifest=odd_dataset["manifest"], captions=odd_dataset["captions"],
                          video_root=odd_dataset["video_root"], store=str(store), workers=0, part_size=2,
                          groups=["resnet152", "logmel", "davenet", "frames", "word2vec", "hf_text"],
                          resnet152_weights=weights["resnet152"], davenet=weights["davenet"],
                          word2vec=weights["word2vec"], weights={"hf_text": str(tmp_path / "bert")},
                          short_side=64, precision="fp32", progress=False))
    written = sorted(set(_all_arrays(zarr.open_group(str(store), mode="r"))))
    patterns = documented()
    assert len(written) > 40 and len(patterns) > 20
    undocumented = [a for a in written if not any(p.match(a) for p in patterns)]
    assert not undocumented, f"arrays the store has and docs/store-format.md does not name: {undocumented}"
    unwritten = [p.pattern for p in patterns if "label_" not in p.pattern and not any(p.match(a) for a in written)]
    assert not unwritten, f"arrays docs/store-format.md names and a real extraction does not write: {unwritten}"
    xarray = pytest.importorskip("xarray", reason="xarray comes with the [test] extra")
    groups = sorted({a.rsplit("/", 1)[0] if "/" in a else "" for a in written})
    for g in groups:  # every group opens in xarray, named dimensions shared where lengths are
        ds = xarray.open_zarr(str(store), group=g or None, consolidated=False)
        assert set(ds.variables) >= {a.rsplit("/", 1)[-1] for a in written if (a.rsplit("/", 1)[0] if "/" in a
                                                                                else "") == g}, g
    part = xarray.open_zarr(str(store), group="parts/p000000/resnet152", consolidated=False)
    assert part["data"].dims == ("row", "data_1") and part["status"].dims == ("video",)
    assert part.sizes["video"] == 2 and part["offsets"].dims == ("video_edge",)
    clips = xarray.open_zarr(str(store), group="clips", consolidated=False)
    assert clips["start"].dims == ("clip",) and clips.sizes["clip"] == FeatureStore(store).n_clips


def _all_arrays(group, prefix=""):
    for name, _ in group.arrays():
        yield f"{prefix}{name}"
    for name, sub in group.groups():
        yield from _all_arrays(sub, f"{prefix}{name}/")
