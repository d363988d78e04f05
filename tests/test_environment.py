"""requirements.txt, environment.yml and pyproject.toml pin the same packages."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:==\s*([^\s;]+))?", line)
        if m and line not in ("-e .", "pip"):
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_requirements_and_environment_yml_agree():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    yml = _pins(pip_section)
    assert req == yml, f"only in requirements.txt: {set(req.items()) - set(yml.items())}; " \
                       f"only in environment.yml: {set(yml.items()) - set(req.items())}"
    assert req["torch"] == "2.13.0", "always pin torch==2.13.0 (an unpinned torch pulls GBs of CUDA)"
    assert req["jupyter-book"].startswith("1."), "jupyter-book 2.x cannot build offline"


def test_pyproject_pins_match_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    for name, version in _pins(deps).items():
        assert name in req, f"{name} is a dependency in pyproject.toml but missing from requirements.txt"
        assert version == req[name], f"{name}: pyproject pins {version}, requirements.txt {req[name]}"
