"""`make lab`: JupyterLab on notebooks/ with the project's environment as a named kernel, offline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local server this test started
        return json.loads(r.read())


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_the_circuittrack_kernel_and_fetches_nothing(tmp_path):
    port, token = _free_port(), "circuittrack-test"
    args = f"--no-browser --port {port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path)}
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                specs = _get(f"{base}/api/kernelspecs?token={token}")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("JupyterLab did not start: " + (proc.stdout.read()
                                                                        if proc.poll() is not None else ""))
                time.sleep(0.5)
        kernel = specs["kernelspecs"]["circuittrack"]["spec"]
        assert kernel["display_name"] == "circuittrack (.venv)"
        assert Path(kernel["argv"][0]).resolve() == Path(sys.executable).resolve()  # this environment's Python
        contents = _get(f"{base}/api/contents?token={token}")
        assert "01_task_behaviour.ipynb" in {c["name"] for c in contents["content"]}  # opened on notebooks/
        assert _get(f"{base}/lab/api/news?token={token}")["news"] == []  # no news feed fetched
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
