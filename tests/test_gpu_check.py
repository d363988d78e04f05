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


#: What the project needs that a GPU machine's own Python (PyTorch, transformers, pandas, ... but not the book's
#: tools) lacks: the check must run without them.
NOT_ON_A_GPU_IMAGE = ("circuittrack", "altair", "vl_convert", "papermill", "nnsight", "transformer_lens", "ray",
                      "jupyter_book", "ipykernel")


def test_it_runs_with_a_python_that_has_pytorch_but_not_this_package_nor_the_book_tools(tmp_path):
    """A GPU machine runs the script with its own python3: circuittrack comes from lib/ (the script puts it on
    the path), and nothing the check imports needs the book's or the other backends' packages."""
    import site
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "py")
    bare_site = next((tmp_path / "py" / "lib").glob("python3*")) / "site-packages"
    (bare_site / "deps.pth").write_text(site.getsitepackages()[0] + "\n")  # its .pth files (the install) unread
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCK = {NOT_ON_A_GPU_IMAGE[1:]!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ImportError(f'not on a GPU image: {name}')\n"
        "sys.meta_path.insert(0, Block())\n")
    py = str(tmp_path / "py" / "bin" / "python")
    env = dict(ENV, PY=py, PYTHONPATH=str(blocker))
    for name in NOT_ON_A_GPU_IMAGE:  # the setup is what it says
        probe = subprocess.run([py, "-c", f"import {name}"], capture_output=True, text=True, env=env)
        assert probe.returncode != 0, name
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--shapes", "smoke-a",
                          "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["fake_hub_sweep"]["ok"] and report["shapes"][0]["eap_ig"]["ratio"] > 0
