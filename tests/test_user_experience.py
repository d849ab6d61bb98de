"""What a new user meets first: --help, config files found outside the repository, where the
outputs went, what config.json records, ~ in paths, the progress line, missing extras."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from irmx.data import images
from irmx.experiments import cli
from irmx.experiments.loop import _progress_note
from irmx.io import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_help_lists_flags_config_docstring_and_variants(tmp_path):
    out = _run([os.path.join(ROOT, "launch", "irm.py"), "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    texts = {"paper": out.stdout}
    for launcher, variant in (("train", "cifar10_resnet18"), ("measures", "seed_compat")):
        default = cli.config_file({"train": "measures/noisy_classification.py",
                                   "measures": "measures/jacobian.py"}[launcher])
        texts[variant] = cli.usage([f"irmx-{launcher}"], default, f"{launcher} docstring")
    for variant, text in texts.items():
        for flag in ("--config=", "--workdir=", "--print_config", "--[no]progress",
                     "--helpfull"):
            assert flag in text
        assert "config file " in text and "variants: " in text and variant in text
        assert "absl" not in text.split("config file")[0]  # irmx's flags, not absl's


def test_config_path_resolves_against_the_installed_package(tmp_path, monkeypatch):
    """From a folder without configs/, the README's --config=configs/... names the installed
    package's file (the command-line run of the next test starts there)."""
    monkeypatch.chdir(tmp_path)
    spec = cli.resolve_config_path("configs/irm/regression.py:paper")
    assert spec.endswith(os.path.join("irmx", "configs", "irm", "regression.py") + ":paper")
    assert cli.resolve_config_path("nowhere/x.py:a") == "nowhere/x.py:a"
    argv = cli.resolve_config_argument(["x", "--config", "configs/irm/regression.py:smoke"])
    assert argv[2].endswith("regression.py:smoke") and os.path.isabs(argv[2])


def test_a_run_ends_saying_where_its_outputs_are_and_records_how_it_was_made(tmp_path):
    run_dir = tmp_path / "run"
    args = [os.path.join(ROOT, "launch", "irm.py"), "--config=configs/irm/regression.py:smoke",
            f"--workdir={run_dir}", "--config.num_seeds=2", "--noprogress"]
    out = _run(args, tmp_path)  # outside the repository: the config resolves to irmx's
    assert out.returncode == 0, out.stderr
    assert "causal_error" in out.stdout  # the table prints with --noprogress
    assert f"outputs: {run_dir}" in out.stdout
    assert "figures: plots/curves.png, plots/errors.png" in out.stdout
    assert f"tensorboard --logdir {run_dir}" in out.stdout
    record = json.loads((run_dir / "config.json").read_text())
    (first,) = record["invocations"]
    assert first["command"][-(len(args) - 1):] == args[1:]  # as typed, before resolution
    assert first["git_commit"] == "" or len(first["git_commit"].split("+")[0]) == 40
    _run(args, tmp_path)  # a re-run (nothing to do) is recorded too
    record = json.loads((run_dir / "config.json").read_text())
    assert len(record["invocations"]) == 2


def test_tilde_in_data_dir_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert images.resolve_data_dir("~/tensorflow_datasets") == str(
        tmp_path / "tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", "~/tfds")
    assert images.resolve_data_dir(None) == str(tmp_path / "tfds")


def test_missing_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(images.DatasetNotFoundError, match=r"pip install 'irmx\[data\]'"):
        images.load_tfds("cifar10", "train", "/nonexistent")


def test_progress_note_shows_mean_loss_of_live_learners():
    metrics = {"diverged": np.array([False, True, False]),
               "risk": np.array([1.0, np.nan, 3.0])}
    assert _progress_note(("risk", "absent"), metrics, 1) == "risk 2 diverged 1"


def test_provenance_is_json():
    json.dumps(wd.provenance())


def test_print_config_marks_what_the_variant_does_not_use():
    from irmx.configs.irm.regression import get_config
    from irmx.experiments import irm

    unused = irm.unused_keys(get_config("base_erm"))
    assert unused["criterion.penalty_weight"] == "criterion.name='erm'"
    assert "gradient_manager.alpha" in unused and "optim.lr" not in unused
    text = cli.format_config(get_config("base_erm"), unused)
    assert "# not used by this config:" in text
    assert "#   model.hidden  (model.name='linear')" in text
    adareg = irm.unused_keys(get_config("adareg"))
    assert "gradient_manager.alpha" not in adareg and "gradient_manager.beta" in adareg
    paper_irm = irm.unused_keys(irm.experiment_config(get_config("paper"), "irm"))
    assert "criterion.penalty_weight" in paper_irm and "criterion.erm_weight" not in paper_irm
