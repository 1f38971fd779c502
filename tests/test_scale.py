"""HowTo100M scale: streaming planning in bounded memory, every caption-table format, a store plain Zarr
reads, lazy opening, old layouts refused clearly, clustering trainers on more clips than they fit."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr

from manifests.read import ManifestError
from pipeline.plan import plan_store
from pipeline.store import FeatureStore, StoreError
from synthetic import build_store, write_inputs


def planner_peak_mb(store, manifest, captions) -> float:
    """Peak RSS (MB) of a fresh process that plans the store."""
    code = textwrap.dedent(f"""
        import resource
        from pipeline.plan import plan_store
        plan_store({str(store)!r}, {str(manifest)!r}, {str(captions)!r})
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def test_planning_memory_does_not_grow_with_the_captions(tmp_path):
    small = write_inputs(tmp_path / "small", 1000, captions_per_video=100)
    large = write_inputs(tmp_path / "large", 5000, captions_per_video=100)
    size = large[1].stat().st_size / 1e6  # ~30 MB of JSON; json.loads alone would need several times that
    a = planner_peak_mb(tmp_path / "small.zarr", *small)
    b = planner_peak_mb(tmp_path / "large.zarr", *large)
    assert b - a < 0.5 * size, f"planning 400k more captions grew peak RSS by {b - a:.0f} MB ({size:.0f} MB JSON)"
    s = FeatureStore(tmp_path / "large.zarr")
    assert (s.n_videos, s.n_clips) == (5000, 500_000)
    captions = json.loads(large[1].read_text())
    assert s.clip_values("text", [0, 499_999]).tolist() == [captions["vid0000000"]["text"][0],
                                                            captions["vid0004999"]["text"][-1]]


CAPTIONS = {"a": {"start": [0, 2, 5], "end": [2, 1, 7], "text": ["one", "bad time", "two"]},
            "b": {"start": [1.5], "end": [3.25], "text": ["three"]}}


def write_table(path, kind):
    rows = [(v, s, e, t) for v, c in CAPTIONS.items() for s, e, t in zip(c["start"], c["end"], c["text"])]
    if kind == "json":
        path.write_text(json.dumps(CAPTIONS))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(dict(video_id=v, start=s, end=e, text=t)) + "\n" for v, s, e, t in rows))
    elif kind == "csv":
        path.write_text("video_id,start,end,text\n" + "".join(f"{v},{s},{e},{t}\n" for v, s, e, t in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = list(zip(*rows))
        pq.write_table(pa.table({"video_id": cols[0], "start": [float(x) for x in cols[1]],
                                 "end": [float(x) for x in cols[2]], "text": cols[3]}), path)


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet"])
def test_every_caption_table_format_plans_the_same_store(tmp_path, kind):
    (tmp_path / "m.csv").write_text("video_id,task\nb,x\na,y\nc,z\n")
    captions = tmp_path / f"captions.{kind}"
    write_table(captions, kind)
    plan_store(tmp_path / "s.zarr", str(tmp_path / "m.csv"), str(captions))
    s = FeatureStore(tmp_path / "s.zarr")
    assert s.videos["video_id"].tolist() == ["a", "b", "c"]  # caption order, then videos without captions
    assert s.clip_offsets.tolist() == [0, 2, 3, 3]
    assert s.clip_rows("start", 0, 3).tolist() == [0.0, 5.0, 1.5] and s.clip_rows("end", 0, 3).tolist() == [2, 7, 3.25]
    assert s.clip_values("text", [0, 1, 2]).tolist() == ["one", "two", "three"]
    assert s.labels([0, 2])["task"].tolist() == ["y", "x"]
    problems = "\n".join(s.problems())
    where = {"json": "captions.json['a'][1]", "jsonl": "captions.jsonl line 2", "csv": "captions.csv line 3",
             "parquet": "captions.parquet row 1"}[kind]
    assert f"{where}: bad caption time" in problems and "no captions for video 'c'" in problems
    assert s.problems(1) == s.problems()[:1]


def test_a_caption_table_not_grouped_by_video_is_reported(tmp_path):
    (tmp_path / "m.csv").write_text("video_id\na\nb\n")
    (tmp_path / "c.csv").write_text("video_id,start,end,text\na,0,1,x\nb,0,1,y\na,2,3,z\n")
    plan_store(tmp_path / "s.zarr", str(tmp_path / "m.csv"), str(tmp_path / "c.csv"))
    s = FeatureStore(tmp_path / "s.zarr")
    assert s.n_clips == 2 and any("c.csv line 4: captions for 'a' again" in p for p in s.problems())
    with pytest.raises(ManifestError, match="--strict"):
        plan_store(tmp_path / "t.zarr", str(tmp_path / "m.csv"), str(tmp_path / "c.csv"), strict=True)
    assert not (tmp_path / "t.zarr").exists()
    (tmp_path / "odd.json").write_text('{"a": [1, 2], "b": {"start": 3, "end": [4], "text": ["y"]}}')
    plan_store(tmp_path / "v.zarr", str(tmp_path / "m.csv"), str(tmp_path / "odd.json"))
    assert sum("expected {start: [...], end: [...], text: [...]} lists" in p
               for p in FeatureStore(tmp_path / "v.zarr").problems()) == 2
    (tmp_path / "bad.json").write_text('{"a": {"start": [0], "end": [1], "text": ["x"]}, ')
    with pytest.raises(ManifestError, match="not valid JSON"):
        plan_store(tmp_path / "u.zarr", str(tmp_path / "m.csv"), str(tmp_path / "bad.json"))
    assert not list(tmp_path.glob(".tmp-*"))


PLAIN_READER = """
import sys, json
import numpy as np, zarr
root = zarr.open_group(sys.argv[1], mode="r")
meta = root.attrs["mmcache"]
vid = list(root["videos/video_id"][:]).index(sys.argv[2])
first, last = root["videos/clip_offsets"][vid:vid + 2]
clip = first + int(sys.argv[3])  # the n-th clip of the video
start, end = root["clips/start"][clip], root["clips/end"][clip]
part, local = divmod(vid, meta["part_size"])
unit = root[f"parts/p{part:06d}/resnet152"]
a, b = unit["offsets"][local:local + 2]
rate = root.attrs["groups"]["resnet152"]["rate"]
rows = unit["data"][a:b][int(np.floor(start * rate)):int(np.floor(end * rate)) + 1]
assert not [m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainers", "features", "manifests")]
np.save(sys.argv[4], rows)
print(str(root.tree()).count("data ("))
"""


def test_a_plain_zarr_user_reads_a_clips_features(odd_dataset, weights, tmp_path):
    from pipeline.extract import ExtractConfig, extract

    store = tmp_path / "s.zarr"
    extract(ExtractConfig(manifest=odd_dataset["manifest"], captions=odd_dataset["captions"], store=str(store),
                          video_root=odd_dataset["video_root"], resnet152_weights=weights["resnet152"],
                          groups=["resnet152"], workers=0, part_size=2, short_side=64, progress=False))
    out = subprocess.run([sys.executable, "-W", "error", "-c", PLAIN_READER, str(store), "good0", "1",
                          str(tmp_path / "rows.npy")], capture_output=True, text=True, check=True)
    s = FeatureStore(store)
    assert int(out.stdout.split()[-1]) == s.n_parts  # tree() shows every committed unit, warning-free
    expected = s.read("resnet152", ["good0#1"])[0]
    assert expected.shape == (2, 2048)  # [2, 4] s at 1 fps: rows 2..4, of which a 4-row video has 2, 3
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), expected)


def test_open_is_lazy_and_old_layouts_name_the_rebuild_command(tmp_path):
    m, c = write_inputs(tmp_path / "in", 50, captions_per_video=20)
    plan_store(tmp_path / "s.zarr", str(m), str(c))
    s = FeatureStore(tmp_path / "s.zarr")
    assert "videos" not in s.__dict__ and "_clips" not in s.__dict__  # nothing per video or clip read yet
    assert s.clip_index(["vid0000003#19"]).tolist() == [3 * 20 + 19]
    with pytest.raises(KeyError, match="unknown clip key"):
        s.clip_index(["vid0000003#20"])
    old = tmp_path / "old.zarr"
    zarr.open_group(str(old), mode="w").attrs.update({"mmcache": {"version": 1, "manifest": "howto.csv",
                                                                  "captions": "caption.json"}})
    with pytest.raises(StoreError, match="layout v1.*pipeline extract --manifest howto.csv --captions caption.json"):
        FeatureStore(old)
    from trainers.cli import main

    assert main(["mcn", "--store", str(old), "--out", str(tmp_path / "run")]) == 2
    (old / "zarr.json").write_text('{"attributes": {"mmcache": ')
    with pytest.raises(StoreError, match=r"old.zarr/zarr.json is damaged"):
        FeatureStore(old)


def test_xdc_fitted_on_a_sample_assigns_every_clip(stores, tmp_path):
    from trainers.methods.xdc import XDCConfig
    from trainers.train import train

    cfg = XDCConfig(store=str(stores["classes"]), out=str(tmp_path / "xdc"), clusters=4, iterations=4, epochs=2,
                    batch_size=32, pca=0, fit_points=96, loader_workers=0)
    out = train(cfg, progress=False)  # 192 clips, k-means fitted on 96 of them each iteration
    for source in ("cluster_v", "cluster_a"):
        assert out["metrics"]["task"][source]["NMI"] > 0.8, out["metrics"]["task"]
    assert zarr.open_group(str(tmp_path / "xdc" / "labels.zarr"), mode="r")["cluster_v"].shape == (192,)


def test_chunked_sinkhorn_equals_one_chunk():
    from trainers.losses import sinkhorn_labels

    log_p = torch.log_softmax(torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    r = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(1)), dim=0)
    whole, it_whole = sinkhorn_labels(log_p, 20.0, r)
    chunked, it_chunked = sinkhorn_labels(log_p, 20.0, r, chunk=37)
    assert torch.equal(whole, chunked) and it_whole == it_chunked


def test_benchmark_store_builder_reads_back(tmp_path):
    m, c = write_inputs(tmp_path / "in", 30, captions_per_video=10)
    s = build_store(tmp_path / "s.zarr", m, c, part_size=8)
    assert s.n_parts == 4 and s.video_status("davenet")[0].tolist() == ["ok"] * 30
    assert (s.text_ok_per_video() == 10).all() and s.video_rows("davenet", 29)().shape == (75, 1024)
