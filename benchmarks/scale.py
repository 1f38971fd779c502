"""How time and peak memory grow with the dataset: planning, opening the store, MCN's first step.

Builds HowTo100M-shaped synthetic inputs and stores (110 captions per video, 12 s videos so the disk holds
them) with the project's own writer API at three sizes (default 0.1%, 0.5% and 2% of HowTo100M's 1.24M
videos), measures each stage in a fresh subprocess (peak RSS of the process and its loader workers), fits
a line through the three sizes and extrapolates to HowTo100M (1.24M videos, 136M captions). On the
smallest store it also compares the streaming trainer's steps/s with the bare model on a batch in RAM.
Usage: python benchmarks/scale.py [--videos 1240 6200 24800] [--keep DIR]
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import build_store, write_inputs  # noqa: E402  (the tests' synthetic data, real writer API)

HOWTO_VIDEOS, HOWTO_CLIPS = 1.24e6, 136e6
TRAIN = ["--combo", "va+all", "--dim", "1024", "--videos-per-batch", "32", "--clips-per-video", "8",
         "--min-time", "10", "--warmup", "2", "--clusters", "32", "--queue-steps", "4", "--checkpoint-every", "10000",
         "--log-every", "1", "--loader-workers", "1", "--no-progress"]

# runs CMD, polls FILE for its first line, prints {first_s, total_s, rss_mb} (peak of CMD and its children)
WATCH = """
import json, os, resource, subprocess, sys, time
cmd, watch = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.time(); first = None
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
while p.poll() is None:
    if first is None and watch and os.path.exists(watch) and os.path.getsize(watch):
        first = time.time() - t0
    time.sleep(0.01)
err = p.stderr.read().decode()
if p.returncode: sys.exit(err)
print(json.dumps({"first_s": first, "total_s": time.time() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure(cmd: list[str], watch: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", WATCH, json.dumps(cmd), watch], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def fit(x, y, at):
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return slope, intercept + slope * at


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, nargs=3, default=[1240, 6200, 24800])
    ap.add_argument("--keep", help="build the stores here and keep them (default: a temp dir, removed)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    imports = "from pipeline.plan import plan_store; import zarr, numpy, ijson"
    base = measure(python(imports))["rss_mb"]
    for n in args.videos:
        d = root / f"v{n}"
        t = time.time()
        manifest, captions = write_inputs(d, n)
        made = time.time() - t
        store = d / "features.zarr"
        shutil.rmtree(store, ignore_errors=True)
        plan = measure(python(f"{imports}; plan_store({str(store)!r}, {str(manifest)!r}, {str(captions)!r}, "
                              "part_size=64)"))
        t = time.time()
        s = build_store(store, manifest, captions)
        built = time.time() - t
        opened = measure(python(f"import time; from pipeline.store import FeatureStore; t = time.time(); "
                                f"s = FeatureStore({str(store)!r}); print(time.time() - t, file=open("
                                f"{str(d / 'open.txt')!r}, 'w')); s.n_clips"))
        open_s = float((d / "open.txt").read_text())
        run = d / "run"
        shutil.rmtree(run, ignore_errors=True)
        first = measure([sys.executable, "-m", "trainers.cli", "mcn", "--store", str(store), "--out", str(run),
                         "--steps", "3", *TRAIN], str(run / "metrics.jsonl"))
        rows.append(dict(videos=n, clips=s.n_clips, captions_mb=captions.stat().st_size / 1e6,
                         plan_s=plan["total_s"], plan_rss=plan["rss_mb"], open_s=open_s, open_rss=opened["rss_mb"],
                         first_s=first["first_s"], train_rss=first["rss_mb"]))
        r = rows[-1]
        print(f"{n:7d} videos {r['clips']:9d} clips ({r['captions_mb']:.0f} MB captions JSON; inputs {made:.0f} s, "
              f"features {built:.0f} s): plan {r['plan_s']:6.1f} s {r['plan_rss']:6.0f} MB | open "
              f"{1000 * r['open_s']:5.1f} ms {r['open_rss']:5.0f} MB | MCN first step {r['first_s']:5.1f} s "
              f"{r['train_rss']:6.0f} MB", flush=True)
    clips, videos = [r["clips"] for r in rows], [r["videos"] for r in rows]
    print(f"\nbaseline RSS of a python with the planner imported: {base:.0f} MB")
    for name, key in (("planning peak RSS", "plan_rss"), ("planning time", "plan_s"), ("trainer peak RSS", "train_rss"),
                      ("time to first step", "first_s"), ("store open", "open_s")):
        values = [r[key] for r in rows]
        slope, at = fit(clips, values, HOWTO_CLIPS)
        unit = "MB" if "rss" in key else "s"
        print(f"{name:20s}: {min(values):9.3f} .. {max(values):9.3f} {unit} measured; slope {slope * 1e6:9.3f} "
              f"{unit} per million clips -> at 136M captions: {max(at, max(values)):10.1f} {unit}")
    slope, at = fit(videos, [r["plan_rss"] for r in rows], HOWTO_VIDEOS)
    print(f"{'planning peak RSS':20s}: slope {slope * 1e6:9.1f} MB per million videos -> at 1.24M videos: "
          f"{at:10.1f} MB")

    from train import bare_rate  # the same measurement as benchmarks/train.py, on the smallest store
    from trainers.methods.mcn import MCNConfig

    small = root / f"v{args.videos[0]}"
    cfg = MCNConfig(store=str(small / "features.zarr"), out=str(small / "rate"), combo="va+all", dim=1024,
                    videos_per_batch=32, clips_per_video=8, min_time=10, warmup=2, clusters=32, queue_steps=4,
                    checkpoint_every=10_000, log_every=1, steps=40, loader_workers=1)
    shutil.rmtree(cfg.out, ignore_errors=True)
    first = measure([sys.executable, "-m", "trainers.cli", "mcn", "--store", cfg.store, "--out", cfg.out,
                     "--steps", "40", *TRAIN], cfg.out + "/metrics.jsonl")
    log = [json.loads(x) for x in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    streamed = (len(log) - 6) / (log[-1]["time"] - log[5]["time"])
    bare = bare_rate(cfg, 40)
    print(f"\nsmallest store, MCN va+all dim 1024, 32x8 clips, min-time 10: streamed {streamed:.2f} steps/s, "
          f"bare model on a batch in RAM {bare:.2f} steps/s, ratio {streamed / bare:.2f} "
          f"(whole run {first['total_s']:.0f} s)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
