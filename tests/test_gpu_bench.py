"""``bench/gpu.py --device cpu --quick``: the device benchmark runs end to end and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def run_bench(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def test_quick_cpu_run_reports_every_section(tmp_path):
    result = run_bench("--device", "cpu", "--quick", "--cache", str(tmp_path), "--profile", str(tmp_path / "prof"))
    assert result["device"] == "cpu" and result["precision"] == "fp32"
    assert result["input"]["jets_per_s"] > 0 and result["input"]["jets_per_s_unpinned_no_prefetch"] > 0
    (tiny,) = result["presets"]
    assert tiny["preset"] == "tiny" and tiny["batch_size"] in (16, 32)
    assert [t["batch_size"] for t in tiny["batch_search"]][:1] == [16]
    assert tiny["eager"]["jets_per_s"] > 0 and tiny["eager"]["tflops_per_s"] > 0
    assert "mfu" not in tiny["eager"]  # no peak known for a CPU
    assert 0 < tiny["flops_per_jet_step"] < tiny["flops_per_jet_step_masked"]
    assert tiny["loader_vs_step"] > 0 and tiny["finetune"]["jets_per_s"] > 0
    assert set(result["targets"]) >= {"loader_met", "paper_mfu_met"}
    profiled = tiny["profile"]
    assert profiled["compiled"] is False and profiled["steps"] == 2
    assert "device_busy_fraction" not in profiled  # no kernels on a CPU
    table = (tmp_path / "prof" / profiled["table"]).read_text()
    assert "host: masks, plans, copies" in table and "aten::" in table


def test_flops_only_counts_packed_and_masked_steps(tmp_path):
    result = run_bench("--device", "cpu", "--quick", "--flops-only", "--batch-size", "32", "--cache", str(tmp_path))
    (tiny,) = result["flops"]
    assert tiny["flops_per_step"] == pytest.approx(32 * tiny["flops_per_jet_step"], rel=1e-3)
    assert tiny["packing_flop_ratio"] > 1


def bench_module():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH.parent))
    return gpu


def test_busy_fraction_is_the_union_of_kernel_intervals():
    busy_fraction = bench_module().busy_fraction
    # [0, 10] and [5, 20] overlap into [0, 20]; [30, 40] adds 10; [32, 35] lies inside it.
    assert busy_fraction([(30, 40), (0, 10), (5, 20), (32, 35)], 100.0) == pytest.approx(0.3)
    assert busy_fraction([], 100.0) == 0.0
    assert busy_fraction([(0, 50), (50, 100)], 100.0) == pytest.approx(1.0)


def test_peak_table_matches_device_names():
    peak_tflops = bench_module().peak_tflops
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("Some Future GPU") is None


#: Packages of ours that the device machines' image lacks (and that cannot be fetched there).
NOT_ON_DEVICE = ("awkward", "uproot", "fastjet", "dask", "distributed", "dvc", "mplhep", "weaver", "hdf5plugin",
                 "tables", "pythia8", "pythia8mc")


def test_device_script_runs_the_benchmark_from_the_checkout(tmp_path):
    """``bench/gpu_device.sh``, the device session's one call, imports jjepa through its link folder and
    needs none of the packages missing on the device (their import is made to fail here)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        f"BLOCKED = {set(NOT_ON_DEVICE)!r}\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'not on the device: {name}')\n"
        "sys.meta_path.insert(0, Blocker())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "out"), "PYTHONPATH": str(blocker)}
    done = subprocess.run(["bash", str(BENCH.parent / "gpu_device.sh"), "--device", "cpu", "--quick", "--no-finetune",
                           "--cache", str(tmp_path)], cwd=BENCH.parents[1], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    result = json.loads((out / "gpu.json").read_text())
    assert result == json.loads(done.stdout) and result["finished"] is True
    assert "jjepa from " + tempfile.gettempdir() in (out / "gpu.log").read_text()
    assert "aten::" in (out / "profile-tiny.txt").read_text() and (out / "nvidia-smi.txt").exists()


def test_device_script_fails_loudly(tmp_path):
    """A failure ends with the log's tail on stderr, from any working directory."""
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gpu.json").write_text('{"stale": true}')
    done = subprocess.run(["bash", str(BENCH.parent / "gpu_device.sh"), "--device", "cpu", "--presets", "nonesuch",
                           "--cache", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode != 0 and "unknown preset" in done.stderr
    assert not (tmp_path / "out" / "gpu.json").exists()  # no stale result passes for this run's
