"""benchmarks/gpu_check.py: the one-run GPU check. Without a GPU: its refusal, its budget, its parsing, its CPU dry run."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real")
def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 2
    assert "no CUDA GPU here" in proc.stderr and "nothing was measured" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_plan_runs_the_slowest_step_last_and_fits_the_budget(tmp_path):
    module = _module()
    full = module.plan(module.argparse.Namespace(device="cuda", quick=False), tmp_path)
    assert [name for name, _, _ in full] == ["tests", "sync", "eager", "train", "compile"]
    assert "--compile" in full[-1][1] and "cuda or gpu" in full[0][1]
    # The step limits may add up to more than the budget: the run stops at the budget (next test), under 8 minutes.
    assert module.BUDGET_S < 8 * 60 < sum(limit for _, _, limit in full)
    quick_cpu = module.plan(module.argparse.Namespace(device="cpu", quick=True), tmp_path)
    assert [name for name, _, _ in quick_cpu] == ["sync", "eager", "train"]


def test_a_spent_budget_skips_the_steps_and_still_writes_the_report(tmp_path):
    proc = _run(tmp_path, "--device", "cpu", "--quick", "--budget", "5")
    assert proc.returncode == 1, proc.stderr  # not every step ran
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(report["steps"]) == {"sync", "eager", "train"}
    assert all(step["rc"] == "skipped: budget spent" for step in report["steps"].values())
    assert report["torch"] == torch.__version__ and report["mode"] == "quick"
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert md.startswith(f"## GPU check ({report['date']}, CPU") and "| sync | rc=skipped: budget spent | 0 |" in md


def test_pytest_counts_are_read_from_a_real_run(tmp_path):
    (tmp_path / "test_tiny.py").write_text(
        "import pytest\ndef test_a(): pass\ndef test_b(): pass\n@pytest.mark.skip\ndef test_c(): pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert _module().parse_pytest(proc.stdout) == {"passed": 2, "skipped": 1}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_cpu_dry_run_runs_every_cpu_step(tmp_path):
    proc = _run(tmp_path, "--device", "cpu", "--quick", timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert steps["sync"]["syncs"] == 0 and steps["sync"]["checked"] is False and steps["sync"]["steps"] == 3
    t = steps["eager"]["numbers"]["throughput"]
    assert t["clrfit_img_s"] > 0 and t["raw_img_s"] > 0 and t["ratio"] == t["clrfit_img_s"] / t["raw_img_s"]
    train = steps["train"]["numbers"]["train"]
    assert train["epochs"] == 1 and len(train["val_accuracy"]) == 1 and 0 <= train["val_accuracy"][0] <= 1
    assert "| train | 1 epochs 1cycle" in (tmp_path / "out" / "gpu_check.md").read_text()
