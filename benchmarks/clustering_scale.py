"""How XDC's and SeLaVi's time and peak memory grow with the number of clips they cluster.

Builds HowTo100M-shaped synthetic stores (the tests' writer-API builder) at three sizes, runs one XDC
iteration (encode, fit PCA + k-means on 20,000 clips -- below every size, so the slope is the per-clip
cost; the default 200,000 adds a constant ~2.5 GB -- assign every clip, one balanced epoch)
and one SeLaVi epoch with two label updates (10 heads, K=256, Sinkhorn over all clips, head by head) in
fresh subprocesses, fits a line through peak RSS and extrapolates the largest N that fits in --ram-gb.
Usage: python benchmarks/clustering_scale.py [--clips 50000 100000 200000] [--ram-gb 24]
"""
import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import measure  # noqa: E402  (peak RSS of a command and its loader workers)
from synthetic import build_store, write_inputs  # noqa: E402

RUNS = {
    "xdc": ["xdc", "--variant", "xdc", "--clusters", "256", "--iterations", "1", "--epochs", "1", "--batch-size", "4096",
            "--pca", "256", "--fit-points", "20000"],
    "selavi": ["selavi", "--heads", "10", "--clusters", "256", "--epochs", "1", "--batch-size", "4096",
               "--label-updates", "2"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, nargs=3, default=[50_000, 100_000, 200_000])
    ap.add_argument("--ram-gb", type=float, default=24.0)
    ap.add_argument("--keep", help="build the stores here and keep them")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-cluster-"))
    if not args.keep:  # a benchmark leaves no GBs behind, also when a run fails
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    results = {m: [] for m in RUNS}
    for n in args.clips:
        d = root / f"c{n}"
        store = d / "features.zarr"
        if not (store / "status").is_dir():
            shutil.rmtree(store, ignore_errors=True)
            m, c = write_inputs(d, n // 100, captions_per_video=100)
            build_store(store, m, c)
        for method, flags in RUNS.items():
            out = d / method
            shutil.rmtree(out, ignore_errors=True)
            r = measure([sys.executable, "-m", "trainers.cli", *flags, "--store", str(store), "--out", str(out),
                         "--no-progress"])
            results[method].append((n, r["rss_mb"], r["total_s"]))
            print(f"{method:6s} {n:8d} clips: {r['total_s']:7.1f} s, peak RSS {r['rss_mb']:7.0f} MB", flush=True)
    for method, rows in results.items():
        n, rss, secs = (np.array(x, float) for x in zip(*rows))
        slope, base = np.polyfit(n, rss, 1)
        tslope = np.polyfit(n, secs, 1)[0]
        fits = (f"largest N in 90% of {args.ram_gb:.0f} GB: {(args.ram_gb * 1024 * 0.9 - base) / slope / 1e6:.1f}M "
                "clips" if slope > 0.5e-3 else "no growth beyond noise (peak RSS does not depend on N here)")
        print(f"{method}: {rss.min():.0f}..{rss.max():.0f} MB measured, slope {slope * 1e6 / 1024:.2f} GB per "
              f"million clips, {tslope * 1e6 / 60:.0f} min per million clips for this run -> {fits}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
