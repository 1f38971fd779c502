"""Every benchmark script runs, at its smallest sizes, and prints its ratio (slow tier). A benchmark is not a timed
test, but one that no longer runs is a broken command in the docs; benchmarks/gpu.py in particular runs only
on a lent GPU machine, where a broken script wastes the lease, so it is rehearsed here with ``--device cpu``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "videos"

# script, its smallest flags, what its output must hold, whether it needs the real videos
RUNS = [
    ("gpu.py", ["--device", "cpu", "--videos", "4", "--seconds", "10", "--batch-size", "8", "--train-steps", "12"],
     [r"decode limit, \d+ processes", r"--decoder pyav: limit = min", r"[\d.]+ of the limit, incl\. start-up",
      r"host-hours for HowTo100M", r"1,000 videos of HowTo100M's mean length .* of the limit \(extrapolated",
      r"ratio: [\d.]+"], True),
    ("extract.py", ["--videos", "2", "--seconds", "10"],
     [r"mmcache / peer at its best", r"mmcache / min\(decode limit", r"1,000 videos .* \(extrapolated\)"], True),
    ("frames.py", ["--videos", "2", "--seconds", "8"], [r"of decode alone", r"x decoding the video again"], True),
    ("parts.py", ["--videos", "4", "--seconds", "8", "--part-size", "2", "--processes", "2"],
     [r"decode limit, 2 processes", r"while tasks ran: .* of the limit"], True),
    ("nvdec_cpu.py", ["--videos", "4", "--seconds", "8", "--processes", "2"],
     [r"prepared ahead in 2 CPU processes .* of the limit"], True),
    ("train.py", ["--steps", "12", "--dim", "128", "--videos", "32", "--videos-per-batch", "8", "--clips-per-video",
                  "4", "--video-dim", "256"], [r"ratio: [\d.]+", r"loader alone"], False),
    ("store.py", ["--videos", "40", "--seconds", "10", "--part-size", "8", "--batch", "32", "--batches", "3"],
     [r"ratio store/RAM: [\d.]+"], False),
    ("scale.py", ["--videos", "40", "80", "160"],
     [r"time to first step .* per million clips", r"ratio [\d.]+"], False),
    ("clustering_scale.py", ["--clips", "5000", "6000", "8000"], [r"xdc: .* per million clips", r"selavi: "], False),
    ("davenet.py", ["--batch", "4", "--frames", "50", "--repeats", "1"], [r"of GEMM"], False),
]


@pytest.mark.slow
@pytest.mark.parametrize("script,flags,expect,real", RUNS, ids=[r[0] for r in RUNS])
def test_benchmark_runs(script, flags, expect, real, tmp_path):
    if real and len(list(REAL.glob("*.mp4"))) < 2:
        pytest.skip(f"the real sample videos are not here ({REAL}: shared/ beside the checkout)")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # whatever it leaves behind goes with the test's folder
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *flags], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{script} exited {out.returncode}:\n{out.stderr[-3000:]}"
    for pattern in expect:
        assert re.search(pattern, out.stdout), f"{script} printed no {pattern!r}:\n{out.stdout[-3000:]}"
