"""experiments.device_check: the dry (CPU) run passes every check through the same code as the GPU run, and a loss
outside its tolerance or a failing fit makes the run fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import device_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_trains_every_network_in_fp32_and_bf16_and_steps_ddp(tmp_path):
    out = tmp_path / "device.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWINS_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "experiments.device_check", "--dry", "--out", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and report["mode"] == "dry" and report["torch"]
    rows = {(r["network"], r["device"], r["dtype"]) for r in report["rows"]}
    for network in device_check.NETWORKS:
        assert {(network, "cpu", "fp32"), (network, "cpu", "bf16")} <= rows
    assert {(n, "cpu DDP x2 (gloo)", "fp32") for n in device_check.DDP_NETWORKS} <= rows
    for name in device_check.DDP_NETWORKS:
        assert report["ddp"][name]["grad_error"] <= device_check.GRAD_TOL and report["ddp"][name]["weight_spread"] == 0
    assert "| next basket | cpu | bf16 |" in run.stdout and "all checks passed" in run.stdout


def test_a_loss_beyond_its_tolerance_or_a_failing_fit_fails_the_run(monkeypatch, tmp_path, capsys):
    def drifting(size: dict, device: str, precision: str) -> tuple[float, int]:
        return (2.0 if precision == "bf16" else 2.0001), 1  # bf16 5e-5 relative off: within 5e-2

    def off_in_bf16(size: dict, device: str, precision: str) -> tuple[float, int]:
        return (1.2 if precision == "bf16" else 1.0), 1  # 20 % off in bf16

    def broken(size: dict, device: str, precision: str) -> tuple[float, int]:
        if precision == "bf16":
            raise RuntimeError("expected scalar type Float but found BFloat16")
        return 1.0, 1

    monkeypatch.setattr(device_check, "NETWORKS", {"drifting": drifting, "off": off_in_bf16, "broken": broken})
    monkeypatch.setattr(device_check, "ddp_rows", lambda size, accelerator: ([], {}))
    assert device_check.main(["--dry", "--out", str(tmp_path / "r.json")]) == 1
    rows = {(r["network"], r["dtype"]): r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["drifting", "fp32"]["passed"] and rows["drifting", "bf16"]["passed"]
    assert not rows["off", "bf16"]["passed"] and rows["off", "fp32"]["passed"]
    assert not rows["broken", "bf16"]["passed"] and "BFloat16" in rows["broken", "bf16"]["error"]
    printed = capsys.readouterr()
    assert "SOME CHECKS FAILED" in printed.out and "broken on cpu (bf16) failed" in printed.err
