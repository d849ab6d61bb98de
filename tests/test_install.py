"""The base install (``pip install .``, no extras) runs the embedded default of every family
from outside the repository (slow: ``pytest --runslow``; needs the package registry)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_base_install_runs_the_digits_trainer_and_names_missing_extras(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, ROOT], check=True, timeout=1800)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "IRMX_JAX_CACHE": ""}
    run = lambda *args: subprocess.run([str(venv / "bin" / args[0]), *args[1:]],
                                       capture_output=True, text=True, cwd=tmp_path, env=env,
                                       timeout=900)
    out = run("irmx-train", "--config=configs/measures/noisy_classification.py:smoke",
              f"--workdir={tmp_path / 'digits'}", "--noprogress")
    assert out.returncode == 0, out.stderr
    assert "test_accuracy" in out.stdout and (tmp_path / "digits" / "summary.json").exists()
    out = run("irmx-train", "--config=configs/measures/noisy_classification.py:smoke",
              f"--workdir={tmp_path / 'c10'}", "--config.data.name=cifar10")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "pip install 'irmx[data]'" in out.stderr
    out = run("irmx-irm", "--help")
    assert out.returncode == 0 and "--workdir=DIR" in out.stdout
