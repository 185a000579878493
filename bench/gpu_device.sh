#!/usr/bin/env bash
# The whole GPU check of a device session, as one command run from the repository root.
#
# Device machines reach no package registry, but their image already has what bench/gpu.py imports
# (torch, numpy, h5py, numba, pyyaml, tqdm, rich, scikit-learn, pyarrow), so nothing is installed:
# jjepa is imported from this checkout through a folder of links that mirrors the package layout
# (pyproject.toml's package-dir). Writes into $OUT (default: ./gpu-out):
#   gpu.json             the benchmark's JSON line (see bench/gpu.py)
#   gpu.log              its warnings and errors
#   profile-<preset>.txt the operators with the most device time, per preset (--profile)
#   nvidia-smi.txt       the GPU, driver and clocks at the start
# Extra arguments go to bench/gpu.py, e.g. `--presets paper --budget-s 300`, or
# `--device cpu --quick` to try this script on a machine without a GPU.
set -euo pipefail

out="${OUT:-gpu-out}"
mkdir -p "$out"
site="$(mktemp -d)"
mkdir -p "$site/jjepa"
for part in common preprocess train; do
    ln -s "$PWD/$part" "$site/jjepa/$part"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="$(command -v python3 || command -v python)"

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" >"$out/nvidia-smi.txt"
"$python" -c 'import jjepa.train.model.jepa as m; print("jjepa from", m.__file__)' >"$out/gpu.log" 2>&1
status=0
"$python" bench/gpu.py --profile "$out" "$@" >"$out/gpu.json" 2>>"$out/gpu.log" || status=$?
cat "$out/gpu.json"
[ "$status" -eq 0 ] || { echo "bench/gpu.py failed (exit $status); the end of $out/gpu.log:" >&2; tail -n 40 "$out/gpu.log" >&2; }
exit "$status"
