#!/usr/bin/env bash
# What a lent GPU machine needs to run mmcache's CUDA tests and benchmarks/gpu.py, prepared here in one go.
#
#   bash benchmarks/gpu_kit.sh          # here: writes .gpu/ (git-ignored through .git/info/exclude)
#   bash benchmarks/gpu_session.sh tests; ... bench   # there, with .gpu carried: installs it, runs, logs to $OUT
#
# The GPU image has Python 3.12 with torch, numpy, scipy, scikit-learn, pillow, matplotlib, transformers, pytest
# and xarray, but not the decoders, Zarr, Dask or gensim; nothing can be fetched there, and what travels is at
# most 64 MiB. So: the missing wheels at the versions constraints.txt pins, gensim without its test data (28 ->
# 6 MB) and PyNvVideoCodec without its FFmpeg source tarball, samples and duplicate libraries (27 -> 6 MB), and the
# real sample videos.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.gpu
grep -qx "/$kit/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$kit/" >> .git/info/exclude; }
rm -rf "$kit" && mkdir -p "$kit/wheels" "$kit/videos"
pin() { grep -i "^$1==" constraints.txt | head -1; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$kit/wheels" "$1"
}
for name in av zarr numcodecs donfig google-crc32c dask distributed locket partd tblib tornado zict ijson gensim \
            smart_open; do
  spec=$(pin "$name")
  [ -n "$spec" ] || { echo "gpu_kit: $name is not pinned in constraints.txt" >&2; exit 1; }
  get "$spec"
done
get "pynvvideocodec>=2.2"
# a wheel rewritten without what an install there never loads (pip installs what the zip holds)
python3 - "$kit/wheels" <<'PY'
import re, sys, zipfile
from pathlib import Path
drop = {"gensim": r"^gensim/test/",
        "pynvvideocodec": r"^(samples|benchmarks)/|\.data/|^PyNvVideoCodec/lib(avformat|avutil)\.so(\.\d+\.\d+\.\d+)?$"}
for wheel in Path(sys.argv[1]).glob("*.whl"):
    pattern = drop.get(wheel.name.split("-")[0].lower())
    if pattern is None:
        continue
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not re.search(pattern, item.filename):
                dst.writestr(item, src.read(item), zipfile.ZIP_DEFLATED)
    print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} -> {slim.stat().st_size / 1e6:.1f} MB")
    slim.replace(wheel)
PY
cp ../shared/data/videos/*.mp4 "$kit/videos/"
echo "gpu_kit: $(du -sb "$kit" | cut -f1) bytes in $kit (the checkout travels too: at most 64 MiB in all); carry it:"
echo "  run(carry=['$kit'], command='bash benchmarks/gpu_session.sh tests', timeout_s=400), then the same with bench"
