#!/usr/bin/env bash
# Make .whl/: the wheels scripts/gpu_check.sh installs on a GPU machine without network (Python 3.12,
# x86_64, torch and most of the scientific stack preinstalled). Run it where the package index is
# reachable; then carry .whl/ with the repository (it is ignored by git).
#
# GPU_NEEDS lists the distributions an offline evaluation imports (doctor, the lmms-eval CLI on POPE,
# MME and DocVQA with every model id, the CUDA tests) that such a machine's image does not have. Each
# is taken at its version in constraints/lock.txt; sparsezip-lmms itself is built from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=${SPARSEZIP_LOCK:-constraints/lock.txt}
PY_VERSION=${GPU_PYTHON_VERSION:-3.12}
DEST=.whl
GPU_NEEDS="annotated-types chardet dataproperty datasets decord defusedxml dill evaluate httpcore2 httpx2 lmms-eval
loguru mbstrdecoder multiprocess nltk numexpr pathvalidate pydantic pydantic-core pytablewriter python-dotenv pytz
sniffio tabledata tcolorpy tenacity truststore typepy typing-inspection wcwidth zstandard"

rm -rf "$DEST" && mkdir -p "$DEST"
pins=()
for name in $GPU_NEEDS; do
  pin=$(grep -i -E "^${name//-/[-_.]}==" "$LOCK" || true)
  [ -n "$pin" ] || { echo "gpu_wheels: $name is not in $LOCK" >&2; exit 1; }
  pins+=("$pin")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d "$DEST" "${pins[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" .
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST/"
