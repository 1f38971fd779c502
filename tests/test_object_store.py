"""Stores on object storage: a store extracted locally and synced to an S3-protocol server on loopback (moto's
server mode) reads as its local copy does -- the reader, `pipeline status / verify / export`, a trainer and
`trainers eval` -- with the endpoint and keys from the usual AWS_* variables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server", reason="moto[server] (the [test] extra) runs the S3 server")
pytest.importorskip("s3fs", reason="s3fs (the [cloud] extra) reads s3:// URLs")
pytest.importorskip("upath", reason="universal-pathlib (the [cloud] extra) reads URLs")

from pipeline.store import FeatureStore  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server with a bucket ``stores``; the AWS_* variables point every client (and subprocess) at it."""
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("stores")
    try:
        yield fs
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def synced(fs, local, name: str) -> str:
    """The user's sync: the local store's files copied under s3://stores/<name>."""
    fs.put(str(local), f"stores/{name}", recursive=True)
    return f"s3://stores/{name}"


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)
    return done


def test_a_synced_store_reads_as_its_local_copy(stores, s3, tmp_path):
    local = FeatureStore(stores["train"])
    url = synced(s3, stores["train"], "train.zarr")
    remote = FeatureStore(url)
    assert str(remote.path) == url and remote.groups == local.groups and remote.meta == local.meta
    for k, v in local.videos.items():
        np.testing.assert_array_equal(remote.videos[k], v, err_msg=k)
    idx = np.arange(local.n_clips)[::-1]
    for g, meta in local.groups.items():
        if meta.get("rate") is not None:
            for a, b in zip(remote.read(g, idx), local.read(g, idx)):
                np.testing.assert_array_equal(a, b)
            assert [x.tolist() for x in remote.video_status(g)] == [x.tolist() for x in local.video_status(g)]
    assert remote.clip_values("text", idx).tolist() == local.clip_values("text", idx).tolist()
    assert {k: v.tolist() for k, v in remote.labels().items()} == {k: v.tolist() for k, v in local.labels().items()}
    assert [x.tolist() for x in remote.word_ids_at(idx)] == [x.tolist() for x in local.word_ids_at(idx)]
    np.testing.assert_array_equal(remote.word_vectors(), local.word_vectors())


@pytest.mark.slow
def test_status_verify_and_export_read_a_synced_store(stores, s3, tmp_path):
    local = FeatureStore(stores["train"])
    url = synced(s3, stores["train"], "cmds.zarr")
    st = [json.loads(cli("status", "--store", s, "--json").stdout) for s in (url, str(stores["train"]))]
    assert st[0] == st[1] and st[0]["videos"] == local.n_videos
    checked = [cli("verify", "--store", s, "--no-progress") for s in (url, str(stores["train"]))]
    assert [c.returncode for c in checked] == [0, 0], checked[0].stderr
    assert checked[0].stdout.split(":", 2)[-1] == checked[1].stdout.split(":", 2)[-1]  # units, MB, 0 damaged
    assert cli("verify", "--store", url, "--repair").returncode == 2  # read-only there: repair the local copy
    pd = pytest.importorskip("pandas")
    for s, out in ((url, tmp_path / "remote.parquet"), (str(stores["train"]), tmp_path / "local.parquet")):
        done = cli("export", "--store", s, "--format", "parquet", "--out", str(out), "--no-progress")
        assert done.returncode == 0, done.stderr
    assert pd.read_parquet(tmp_path / "remote.parquet").equals(pd.read_parquet(tmp_path / "local.parquet"))


def test_a_damaged_synced_store_is_named(stores, s3):
    """A chunk lost on the way (a partial sync) is found by `pipeline verify` there, and readers refuse it."""
    from pipeline.store import StoreError
    from pipeline.store.verify import verify

    url = synced(s3, stores["eval"], "partial.zarr")
    unit = next(p for p in s3.find("stores/partial.zarr/parts") if p.endswith("/data/c/0/0"))
    s3.rm(unit)
    report = verify(FeatureStore(url))
    assert [u.removeprefix(url) for u in report.damaged] == ["/" + "/".join(unit.split("/")[2:-4])]
    assert "chunk file missing" in str(report.damaged)
    group = unit.split("/")[-5]
    with pytest.raises(StoreError, match="chunk file missing"):
        FeatureStore(url).read(group, np.arange(3))


@pytest.mark.slow
def test_a_trainer_and_eval_on_object_storage_give_the_local_numbers(stores, s3, tmp_path):
    train, ev = synced(s3, stores["train"], "t.zarr"), synced(s3, stores["eval"], "e.zarr")
    flags = ["--combo", "va+all", "--dim", "32", "--videos-per-batch", "8", "--clips-per-video", "2", "--steps", "30",
             "--warmup", "5", "--clusters", "4", "--cluster-every", "10", "--queue-steps", "2", "--min-time", "0",
             "--loader-workers", "1"]
    scores = []
    for name, (t, e) in {"local": (str(stores["train"]), str(stores["eval"])), "s3": (train, ev)}.items():
        run = tmp_path / name
        for args in (["mcn", "--store", t, "--out", str(run), *flags], ["eval", "--run", str(run), "--store", e]):
            done = subprocess.run([sys.executable, "-m", "trainers.cli", *args], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads((run / "eval.json").read_text())
        scores.append(result)
    assert scores[1]["store"] == ev and json.loads((tmp_path / "s3" / "config.json").read_text())["provenance"][
        "store"]["path"] == train
    strip = ("run", "store", "minutes", "seconds")
    assert {k: v for k, v in scores[0].items() if k not in strip} == {k: v for k, v in scores[1].items() if k not in strip}
