"""The GPU check script runs end to end (its --smoke mode: the same stages at tiny shapes on the CPU), so it cannot
rot on machines without a GPU; on one, `bash benchmarks/gpu_check.sh` runs it at the Pythia shapes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_its_stages_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [s["shape"] for s in report["shapes"]] == ["smoke-a", "smoke-b"]
    for s in report["shapes"]:
        assert s["greedy_order"]["edges"] == s["edges"] and s["path_patching"]["senders"] == s["layers"] * s["heads"]
        assert s["path_patching"]["finite"] and s["head_scores"]["finite"] and s["size_search"]["calls"] >= 1
        assert s["eap_ig"]["ratio"] > 0
    assert report["fake_hub_sweep"]["ok"] and report["fake_hub_sweep"]["evicted"] == 2


def test_without_a_gpu_it_says_so():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for real")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "no CUDA device here" in run.stderr and "Traceback" not in run.stderr
