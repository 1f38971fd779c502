#!/usr/bin/env bash
# On a lent GPU machine, with .gpu/ carried (benchmarks/gpu_kit.sh made it): what issue 31 measures, in two
# commands that each fit the device's 10-minute limit, together a 15-minute lease. Logs go to $OUT (or
# /tmp/gpu-out), each step's exit status at the end.
#
#   bash benchmarks/gpu_session.sh tests                             # CUDA and NVDEC tests (< 5 min)
#   GPU_VIDEOS=32 GPU_SECONDS=60 bash benchmarks/gpu_session.sh bench   # gpu.py, nvdec_cpu.py (< 8 min)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
what=${1:-tests}
[ -d /tmp/site/zarr ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/wheels/*.whl || { echo "gpu_session: the wheels did not install" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# the tests find the real videos at ../shared/data/videos, as beside a developer's checkout
mkdir -p ../shared/data/videos && cp -n .gpu/videos/*.mp4 ../shared/data/videos/
status=()
step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it, its output to $out/NAME.log and here
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  status+=("$name=${PIPESTATUS[0]}")
}
step env 60 python3 -c "
import torch, av, zarr, dask
from pipeline.decode_nvdec import unavailable
print(torch.__version__, torch.cuda.get_device_name(0), 'av', av.__version__, 'zarr', zarr.__version__,
      'dask', dask.__version__, '| nvdec:', unavailable() or 'available')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/nvidia-smi.log"
if [ "$what" = tests ]; then
  step tests 270 python3 -m pytest -q -p no:cacheprovider -m "slow or not slow" -k "cuda or gpu or nvdec" tests
else
  step gpu 330 python3 benchmarks/gpu.py --videos "${GPU_VIDEOS:-32}" --seconds "${GPU_SECONDS:-60}" --train-steps 30
  step nvdec_cpu 100 python3 benchmarks/nvdec_cpu.py --videos 32 --seconds 30 --processes 4 8
fi
echo "gpu_session: ${status[*]}" | tee "$out/status.log"
