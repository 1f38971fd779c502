"""What `pip install -e .` promises: every third-party import of mmcache is declared (core or an extra), the
core commands run without any extra, and a feature that needs an extra names it in one line."""
import ast
import csv
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ["ffmpeg", "imageio_ffmpeg", "pyarrow", "h5py", "bokeh", "transformers", "upath", "s3fs",
                 "PyNvVideoCodec"]


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):  # a requirement's distribution, and those its extras bring (dask[distributed])
        import re
        out = set()
        for r in reqs:
            out.add(re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower().replace("_", "-"))
            out |= set(re.findall(r"\[([^\]]+)\]", r)[0].split(",")) if "[" in r and "mmcache" not in r else set()
        return out
    extras = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def imported_modules() -> set[str]:
    out = set()
    for package in ("pipeline", "trainers", "features", "manifests"):
        for f in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    out |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"pipeline", "trainers", "features", "manifests", "__future__"}


def test_every_third_party_import_is_declared_and_the_heavy_ones_are_extras():
    core, extras = declared()
    dists = packages_distributions()
    missing = {}
    for module in sorted(imported_modules()):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (core | extras | {"torch"}):  # torch brings nothing else mmcache imports by name
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    for heavy in ("ffmpeg-python", "imageio-ffmpeg", "pyarrow", "h5py", "bokeh", "transformers", "pynvvideocodec"):
        assert heavy in extras and heavy not in core
    assert "pillow" in core and "numcodecs" not in core and "pytest" not in core


def blocked(code: str, modules=EXTRA_MODULES) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python where importing any of ``modules`` fails, as when its extra is not installed."""
    prelude = f"import sys\nfor m in {modules!r}:\n    sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.mark.slow  # 11 s: an extraction and a training run in a subprocess (fast tier < 4 min)
def test_extract_and_train_run_without_any_extra(odd_dataset, tmp_path):
    good = tmp_path / "clips.csv"
    with open(good, "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start", "end", "text"], *[[f"good{i}", 0, 2, "a"] for i in range(3)],
                                 *[[f"good{i}", 2, 4, "b"] for i in range(3)]])
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    done = blocked(f"""
from pipeline.cli import main as pipeline
from trainers.cli import main as trainers
assert pipeline(["extract", "--manifest", {str(good)!r}, "--video-root", {odd_dataset['video_root']!r},
                 "--store", {str(store)!r}, "--groups", "resnet152,logmel,davenet", "--random-init",
                 "resnet152,davenet", "--short-side", "64", "--workers", "0", "--no-progress"]) == 0
assert trainers(["mcn", "--store", {str(store)!r}, "--out", {str(run)!r}, "--combo", "va", "--dim", "16",
                 "--videos-per-batch", "2", "--clips-per-video", "2", "--steps", "2", "--warmup", "1",
                 "--clusters", "2", "--queue-steps", "1", "--min-time", "0", "--loader-workers", "0",
                 "--no-progress"]) == 0
for m in {EXTRA_MODULES!r}:
    assert sys.modules.get(m) is None, m
""")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "model.pt").is_file()


@pytest.fixture(scope="module")
def logmel_store(odd_dataset, tmp_path_factory):
    from pipeline.extract import ExtractConfig, extract

    store = tmp_path_factory.mktemp("pk") / "s.zarr"
    extract(ExtractConfig(manifest=odd_dataset["manifest"], captions=odd_dataset["captions"], store=str(store),
                          video_root=odd_dataset["video_root"], groups=["logmel"], workers=0, progress=False))
    return store


@pytest.mark.parametrize("argv,extra", [
    (["pipeline", "export", "--store", "{store}", "--group", "logmel", "--format", "h5", "--out", "{tmp}/x.h5"],
     "h5"),
    (["pipeline", "extract", "--manifest", "{tmp}/v.csv", "--captions", "{tmp}/m.parquet", "--store", "{tmp}/p.zarr"],
     "parquet"),
    (["pipeline", "extract", "--manifest", "{tmp}/m.csv", "--store", "{tmp}/t.zarr", "--groups", "hf_text",
      "--weights", "hf_text={tmp}"], "hf"),
    (["pipeline", "status", "--store", "s3://bucket/store.zarr"], "cloud"),
])
def test_a_feature_that_needs_an_extra_names_it_in_one_line(argv, extra, logmel_store, tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    (tmp_path / "m.csv").write_text("video_id,start,end,text\nv,0,1,a\n")
    (tmp_path / "v.csv").write_text("video_id\nv\n")
    argv = [a.format(store=logmel_store, tmp=tmp_path) for a in argv]
    done = blocked(f"from {argv[0]}.cli import main\nsys.exit(main({argv[1:]!r}))")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"pip install 'mmcache[{extra}]'" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_clip_table_as_parquet_opens_in_pandas_and_datasets(logmel_store, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas", reason="pandas comes with the [test] extra (through xarray)")
    from pipeline.cli import main
    from pipeline.store import FeatureStore

    assert main(["export", "--store", str(logmel_store), "--format", "parquet", "--out", str(tmp_path / "c.parquet"),
                 "--no-progress"]) == 0
    df = pd.read_parquet(tmp_path / "c.parquet")
    s = FeatureStore(logmel_store)
    assert list(df.columns[:5]) == ["key", "video_id", "start", "end", "text"] and len(df) == s.n_clips
    assert df["key"].tolist() == s.clip_keys(range(s.n_clips)).tolist()
    assert df["text"].tolist() == s.clip_values("text", range(s.n_clips)).tolist()
    assert df["start"].tolist() == s.clip_rows("start", 0, s.n_clips).tolist()
    assert {c for c in df.columns if c.startswith("label_")} == {f"label_{k}" for k in s.labels()}
    assert main(["export", "--store", str(logmel_store), "--format", "h5", "--out", str(tmp_path / "x.h5")]) == 2
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local file: nothing to ask the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets comes with the [test] extra")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "c.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == s.n_clips and ds[0]["key"] == df["key"][0]


def test_the_command_lines_start_without_torch_or_scikit_learn():
    """`pipeline status` / `--help` import neither torch nor the extractors (0.4-0.6 s against 1.9 s), and every
    trainers command starts without scikit-learn and scipy (imported where a metric or XDC/SeLaVi needs them)."""
    code = ("import sys, pipeline.cli, trainers.cli\n"
            "print(sorted({m.partition('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'sklearn', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['torch']"  # trainers.cli needs torch (its methods' configs); pipeline.cli alone does not
    code = "import sys, pipeline.cli\nprint('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
