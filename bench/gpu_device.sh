#!/usr/bin/env bash
# The whole GPU check of a device session, as one command.
#
# Device machines reach no package registry, but their image already has what bench/gpu.py imports
# (torch, numpy, h5py, numba, pyyaml, tqdm, rich, scikit-learn, pyarrow), so nothing is installed:
# jjepa is imported from this checkout through a folder of links that mirrors the package layout
# (pyproject.toml's package-dir). Writes into $OUT (default: ./gpu-out):
#   gpu.json             the benchmark's JSON (see bench/gpu.py), rewritten after each section, so a
#                        crash keeps what was measured ("finished": false)
#   gpu.log              its output, warnings and errors
#   profile-<preset>.txt where the time goes, per preset (--profile)
#   nvidia-smi.txt       the GPU, driver and clocks at the start
# Extra arguments go to bench/gpu.py, e.g. `--presets paper --budget-s 300`, or
# `--device cpu --quick` to try this script on a machine without a GPU. PYTHON picks the interpreter.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-gpu-out}"
mkdir -p "$out"
rm -f "$out/gpu.json"
python="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$python" ]; then
    echo "bench/gpu_device.sh: no python3 or python on PATH (set PYTHON=...)" >&2
    exit 1
fi
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
mkdir -p "$site/jjepa"
for part in common preprocess train; do
    ln -s "$root/$part" "$site/jjepa/$part"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" >"$out/nvidia-smi.txt"
status=0
"$python" -c 'import jjepa.train.model.jepa as m; print("jjepa from", m.__file__)' >"$out/gpu.log" 2>&1 &&
    "$python" bench/gpu.py --profile "$out" --json "$out/gpu.json" "$@" >>"$out/gpu.log" 2>&1 || status=$?
[ -f "$out/gpu.json" ] && cat "$out/gpu.json"
if [ "$status" -ne 0 ]; then
    echo "bench/gpu_device.sh: failed (exit $status); the end of $out/gpu.log:" >&2
    tail -n 40 "$out/gpu.log" >&2
fi
exit "$status"
