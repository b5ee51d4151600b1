#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no network, from a copy of the repository:
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# 1. stops with a clear message (exit 3) when torch sees no CUDA device;
# 2. installs what the machine lacks from the wheels in .whl/ (made beforehand, where a package index
#    is reachable, by scripts/gpu_wheels.sh), into a folder put first on PYTHONPATH, against the torch
#    that is there; flash-attn has no binary wheel on the registry and is used only when installed;
# 3. python -m sparsezip_lmms doctor                         -> OUT_DIR/doctor.md
# 4. the CUDA tests (every model id; float16, bfloat16; sdpa, eager, flash_attention_2 when
#    installed; batch 1 vs 4)                                -> OUT_DIR/cuda_tests.txt
# 5. keep_all on Qwen2.5-VL vs lmms-eval's own qwen2_5_vl   -> OUT_DIR/qwen_upstream.txt
# 6. bench --device cuda --quick, whose last section runs the harness (lmms-eval CLI) at batch 1 vs 8
#    on the tiny checkpoint in float16                       -> OUT_DIR/bench_quick.{md,json}
# and writes OUT_DIR/summary.txt. Exit code 0 only when every step passed. Budget: under 10 minutes
# on one H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: >"$OUT/summary.txt"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  seen=$("$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda})")' 2>&1 | tail -n 1)
  log "no CUDA device: $seen sees none. This check needs an NVIDIA GPU; on a CPU machine run make test."
  exit 3
fi
log "$("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")')"

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/sparsezip_gpu_site}
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    log "installing the carried wheels from .whl/ failed"
    exit 4
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  log "installed $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
elif ! "$PY" -c 'import sparsezip_lmms.models.manifest, lmms_eval' >/dev/null 2>&1; then
  log "sparsezip-lmms or lmms-eval is not installed and no wheels are in .whl/ (make them with scripts/gpu_wheels.sh)"
  exit 4
fi
"$PY" -c 'import flash_attn' >/dev/null 2>&1 || log "flash_attn is not installed: flash_attention_2 is skipped (no binary wheel on the registry)"

failed=()
step() {  # step NAME LOGFILE COMMAND...
  local name=$1 file=$2 start=$SECONDS
  shift 2
  log "$name: $*"
  "$@" >"$OUT/$file" 2>&1
  local code=$?
  tail -n 25 "$OUT/$file"
  log "$name: exit $code after $((SECONDS - start)) s"
  [ $code -eq 0 ] || failed+=("$name")
}
step doctor doctor.md "$PY" -m sparsezip_lmms doctor
step cuda-tests cuda_tests.txt "$PY" -m pytest -q -p no:cacheprovider tests/test_half_precision.py -k cuda
# one more pass with CUDA's sync debug mode: every synchronising call warns; the warnings summary lists where
step sync-points sync_points.txt env SPARSEZIP_SYNC_DEBUG=warn "$PY" -m pytest -q -p no:cacheprovider -rw \
  -W "always::UserWarning" tests/test_half_precision.py -k "cuda and float16 and not bfloat16"
# keep_all on Qwen2.5-VL against lmms-eval's own qwen2_5_vl (it needs torchvision: skipped on CPU machines)
step qwen-upstream qwen_upstream.txt "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_qwen_upstream.py
step bench bench_quick.md "$PY" -m sparsezip_lmms bench --device cuda --quick --json "$OUT/bench_quick.json"

if [ ${#failed[@]} -eq 0 ]; then
  log "all steps passed"
  exit 0
fi
log "failed: ${failed[*]}"
exit 1
