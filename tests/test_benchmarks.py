"""The benchmark scripts still run and still measure what they claim, on tiny settings.

They are not timed here (timings belong in benchmarks/RESULTS.md); these tests
check that each script's arithmetic and its behavioural checks hold.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_benchmark(tmp_path: Path, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, CLRFIT_CACHE_DIR=str(tmp_path / "cache"), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.]+)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


def test_overhead_trains_identical_weights_and_reports_the_median_ratio(tmp_path):
    out = run_benchmark(tmp_path, "overhead.py", "--runs", "1", "--epochs", "1", "--threads", "1").stdout
    assert "identical final weights in every run: True" in out
    per_run = re.search(r"learner ([0-9.]+)s\s+raw ([0-9.]+)s\s+ratio ([0-9.]+)", out)
    assert per_run, out
    learner, raw, ratio = map(float, per_run.groups())
    assert ratio == pytest.approx(learner / raw, rel=0.01)  # the times are printed rounded
    assert number_after("median ratio learner/raw:", out) == ratio  # one run: its own median


def test_overhead_interleaved_reports_the_learner_against_both_hand_written_loops(tmp_path):
    out = run_benchmark(tmp_path, "overhead.py", "--interleaved", "--model", "mlp", "--rounds", "1", "--epochs", "1",
                        "--threads", "1").stdout
    times = out.split("median us/step:")[1].split("\n")[0]
    learner, raw, direct = (number_after(name, times) for name in ("learner", "raw", "raw, direct clear"))
    for base, us in (("raw", raw), ("raw, direct clear", direct)):
        line = out.split(f"learner over {base}:")[1].split("\n")[0]
        difference = float(re.match(r"\s*([-+][0-9.]+) us/step", line).group(1))
        assert difference == pytest.approx(learner - us, abs=0.15)  # one round: the medians are its times
        assert number_after("median ratio", line) == pytest.approx(learner / us, rel=0.002)


def test_lr_find_cost_ratios_are_the_measured_times_divided(tmp_path):
    out = run_benchmark(tmp_path, "lr_find_cost.py", "--num-it", "8", "--rounds", "1", "--synthetic",
                        "--threads", "1").stdout
    plain, finder, finder2 = (number_after(f"{name}", out.split("median ms/it:")[1])
                              for name in ("plain", "lr_find", "lr_find2"))
    assert number_after("lr_find2/plain", out.split("ratio lr_find/plain")[1]) == pytest.approx(finder2 / plain, rel=0.01)
    assert number_after("ratio lr_find/plain", out) == pytest.approx(finder / plain, rel=0.01)


def test_checkpoint_cost_writes_real_checkpoints_and_divides_by_no_checkpointing(tmp_path):
    out = run_benchmark(tmp_path, "checkpoint_cost.py", "--epochs", "1", "--rounds", "1", "--synthetic",
                        "--threads", "1").stdout
    times = out.split("median ms/it:")[1].split("\n")[0]
    ratios = out.split("ratio to off:")[1].split("\n")[0]
    assert number_after("off", ratios) == 1.0
    assert number_after("ckpt/1", ratios) == pytest.approx(number_after("ckpt/1", times) / number_after("off", times),
                                                            rel=0.01)
    assert number_after("checkpoint file", out) > 100  # kB: the model, the optimizer and the history


@pytest.mark.parametrize("model", ["cnn1d", "paper-cnn"])
def test_superconvergence_quick_counts_epochs_and_divides_them(tmp_path, model):
    results = tmp_path / "runs.json"
    out = run_benchmark(tmp_path, "superconvergence.py", "--quick", "--workers", "1", "--model", model,
                        "--json", str(results)).stdout
    saved = json.loads(results.read_text())
    runs = saved["runs"]
    constant = [r for r in runs if r["kind"] == "constant"]
    assert len(constant) == 1 and len(constant[0]["accs"]) == 4  # --quick: one lr, 4 epochs, one seed
    one_cycle = {(r["lr"], r["epochs"]): r["accs"] for r in runs if r["kind"] == "1cycle"}
    assert all(len(accs) == epochs for (_, epochs), accs in one_cycle.items())
    row = saved["summary"][0]
    target = row["target"]
    # recompute the summary from the saved runs: every branch is checked, reached or not
    first = next((i + 1 for i, a in enumerate(constant[0]["accs"]) if a >= target), None)
    assert (row["constant"] and row["constant"][1]) == first
    reached = sorted((epochs, lr) for (lr, epochs), accs in one_cycle.items() if accs[-1] >= target)
    assert (row["one_cycle"] and row["one_cycle"][1]) == (reached[0][0] if reached else None)
    if reached:
        lr, epochs, acc = row["one_cycle"]
        assert one_cycle[(lr, epochs)][-1] == acc >= target
    else:
        assert "1cycle: not reached with budgets up to 2 epochs" in out
    if first and reached:
        assert row["ratio"] == reached[0][0] / first
        assert f"ratio 1cycle / constant = {reached[0][0]}/{first}" in out
    else:
        assert "ratio" not in row
    if model == "cnn1d":  # this tiny run reaches the 50% target both ways, so the ratio path runs too
        assert first and reached
    assert f"model {model}" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures a real GPU; run it by hand there")
def test_gpu_throughput_refuses_to_report_numbers_without_a_gpu(tmp_path):
    proc = run_benchmark(tmp_path, "gpu_throughput.py", check=False)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr and "nothing was measured" in proc.stderr
    assert "ratio" not in proc.stdout
