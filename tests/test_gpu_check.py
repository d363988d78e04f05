"""The GPU check script runs end to end (its --smoke mode: the same stages at tiny shapes on the CPU), so it cannot
rot on machines without a GPU; on one, `bash benchmarks/gpu_check.sh` runs it at the Pythia shapes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {"PY": sys.executable, "PATH": "/usr/bin:/bin"}


def test_the_gpu_check_runs_its_stages_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["complete"] and not out.with_name("check.json.tmp").exists()
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


def test_a_run_stopped_midway_leaves_every_finished_stage_on_disk(tmp_path):
    """As a device time limit would: killed once its first stage is done, the JSON holds that stage."""
    out = tmp_path / "check.json"
    proc = subprocess.Popen(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--shapes", "smoke-b",
                             "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV)
    try:
        for line in proc.stderr:
            if "smoke-b eap_ig" in line:
                break
        report = json.loads(out.read_text())  # saved before the stage says it is done
    finally:
        proc.kill()
        proc.wait()
    assert "done" in line and not report["complete"]
    assert [s["shape"] for s in report["shapes"]] == ["smoke-b"]
    shape = report["shapes"][0]
    assert shape["eap_ig"]["ratio"] > 0 and "size_search" not in shape
    assert json.loads(out.read_text())["shapes"][0]["eap_ig"] == shape["eap_ig"]  # still whole after the kill


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_stage_is_recorded_and_the_next_one_runs(capsys):
    gc = _gpu_check_module()
    out, saved = {"shape": "x"}, []
    gc.run_stage(out, "first", lambda: 1 / 0, lambda: saved.append(json.dumps(out)))
    gc.run_stage(out, "second", lambda: {"seconds": 1.0}, lambda: saved.append(json.dumps(out)))
    assert out["first"]["error"].startswith("ZeroDivisionError") and out["second"] == {"seconds": 1.0}
    assert "first" in json.loads(saved[0]) and "second" not in json.loads(saved[0])  # saved as each one ends
    assert "x first failed: ZeroDivisionError" in capsys.readouterr().err
    report = {"shapes": [out], "fake_hub_sweep": {"ok": True}}
    assert gc.failed_stages(report) == ["x/first"]
    assert gc.summary_line(out).startswith("x: FAILED {'first': 'ZeroDivisionError")


def test_an_unknown_shape_is_refused_with_the_choices():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--shapes", "pythia-9b"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "unknown shape(s) pythia-9b; choose from pythia-1.4b, pythia-2.8b" in run.stderr
