"""What the user sees when a command is wrong: one ``error:`` line on stderr, exit status 2, no
traceback; the packaging that makes the commands work installed; the files' permissions.

CLI cases run as subprocesses from the repository root, several at a time (each pays the import
cost, a few seconds), with the compilation cache off and the smoke variant.
"""

import functools
import importlib.util
import math
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import ml_collections
import pytest

from irmx import config_args, config_checks
from irmx.config_checks import ConfigError
from irmx.configs.irm import regression
from irmx.configs.measures import jacobian, noisy_classification
from irmx.data import images
from irmx.errors import ArgumentError, UserError
from irmx.experiments import classify, cli, irm, measures
from irmx.io import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/irm/regression.py:irmv1,smoke"
ENV = dict(os.environ, IRMX_JAX_CACHE="", JAX_PLATFORMS="cpu")


def launch_all(commands: dict, timeout=300, prefix=()) -> dict:
    """Run ``{name: [script, *args]}`` concurrently from the repo root; ``{name: (rc, stderr)}``."""
    procs = {name: subprocess.Popen([*prefix, sys.executable, *args, "--progress=false"],
                                    cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    out = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=timeout)
        out[name] = (proc.returncode, err)
    return out


def one_error_line(rc: int, stderr: str) -> str:
    """The single ``error: ...`` line of a refused command (asserting there is exactly that)."""
    assert rc == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# One line instead of a traceback (or a usage page)


def test_command_line_mistakes_are_one_line(tmp_path):
    """One command per place a mistake is caught: before the flags are defined (config file,
    override key), while absl parses them (the tuple), in the main (workdir) and in the run
    (config values, data set)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    empty_tfds = tmp_path / "tfds"
    empty_tfds.mkdir()
    w = str(tmp_path / "w")
    commands = {
        "no_config": ["launch/irm.py", "--config=configs/irm/nope.py", f"--workdir={w}1"],
        "file_workdir": ["launch/irm.py", SMOKE, f"--workdir={afile}"],
        "no_workdir": ["launch/irm.py", SMOKE],
        "typo": ["launch/irm.py", SMOKE, "--config.optim.lrr=1", f"--workdir={w}3"],
        "nan_tuple": ["launch/irm.py", SMOKE, "--config.data.train_sigmas=(0.2,nan)",
                      f"--workdir={w}5"],
        "seeds": ["launch/irm.py", SMOKE, "--config.seeds=(7,8,7)", f"--workdir={w}7"],
        "tfds": ["launch/train.py", "--config=configs/measures/noisy_classification.py:smoke",
                 "--config.data.name=mnist", f"--config.data.data_dir={empty_tfds}",
                 f"--workdir={w}9"],
    }
    if importlib.util.find_spec("tensorflow_datasets") is None:
        del commands["tfds"]
    line = {name: one_error_line(*r) for name, r in launch_all(commands).items()}

    assert "configs/irm/nope.py" in line["no_config"] and "not found" in line["no_config"]
    assert "regression.py" in line["no_config"]  # the files that are there
    assert str(afile) in line["file_workdir"] and "not a folder" in line["file_workdir"]
    assert "--workdir is required" in line["no_workdir"]
    # the full key, the keys allowed at its level and the likely one
    assert "config.optim.lrr" in line["typo"] and "lr, momentum, name" in line["typo"]
    assert "did you mean config.optim.lr?" in line["typo"]
    assert "config.data.train_sigmas=(0.2, nan) is invalid" in line["nan_tuple"]
    assert "config.seeds=(7, 8, 7)" in line["seeds"] and "repeated: 7" in line["seeds"]
    if "tfds" in line:
        assert "'mnist' is not prepared" in line["tfds"] and "tfds build mnist" in line["tfds"]
    assert not any(os.path.exists(f"{w}{i}") for i in range(1, 10))


def _unprivileged():
    """A command prefix that runs as an unprivileged user who can read everything (so the venv
    under /root is usable) but write only where permissions allow: as root, chmod 0o555 blocks
    nothing. () when not root; None when it cannot be arranged."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
              "env", "MPLCONFIGDIR=/tmp", "HOME=/tmp")
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.geteuid())"],
                           capture_output=True, text=True)
    return prefix if probe.returncode == 0 and probe.stdout.strip() == "65534" else None


def test_read_only_workdir_and_parent_are_one_line(tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions would not block writes")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        res = launch_all({
            "workdir": ["launch/irm.py", SMOKE, f"--workdir={read_only}"],
            "parent": ["launch/irm.py", SMOKE, f"--workdir={read_only}/new/run"],
        }, prefix=prefix)
    finally:
        read_only.chmod(0o755)
    workdir_line = one_error_line(*res["workdir"])
    assert f"workdir {read_only} is not writable" in workdir_line
    parent_line = one_error_line(*res["parent"])
    assert f"its folder {read_only} is not writable" in parent_line
    assert os.listdir(read_only) == []


def test_config_file_and_variant_errors_are_user_errors(tmp_path):
    """What the main's check of the command line raises before any flag is defined."""
    with pytest.raises(UserError, match=r"--config=.*/regression.py:smok: unknown "
                       r"config variant 'smok'; allowed: .*smoke"):
        cli.load_config(os.path.join(ROOT, "configs/irm/regression.py") + ":smok")
    with pytest.raises(UserError, match="config file .*nope.py not found"):
        cli.load_config(str(tmp_path / "nope.py"))
    argv = ["prog", "--config=" + os.path.join(ROOT, "configs/irm/regression.py:smoke"),
            "--config.optimizer.lr=1"]
    with pytest.raises(UserError, match=r"unknown config key config\.optimizer\.lr \(did you "
                       r"mean config\.optim\?\); keys allowed in config: .*optim"):
        cli.check_command_line(argv, "unused.py")


def test_workdir_refuses_a_folder_it_cannot_create(tmp_path):
    """In-process: Workdir() itself turns the OSError of a path it cannot create into a
    WorkdirError (a UserError), so notebooks and every family get the same message."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for path in (afile, afile / "run"):
        with pytest.raises(wd.WorkdirError) as err:
            wd.Workdir(str(path), {"a": 1})
        assert isinstance(err.value, UserError) and str(afile) in str(err.value)
    assert afile.read_text() == ""


def test_user_errors_share_one_base_class():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(wd.WorkdirError, UserError) and issubclass(wd.WorkdirError, RuntimeError)
    assert issubclass(images.DatasetNotFoundError, UserError)
    assert issubclass(images.DatasetNotFoundError, FileNotFoundError)


# ---------------------------------------------------------------------------------------------
# Values accepted silently, or refused with a wrong message


def test_duplicate_seeds_are_refused_naming_them():
    c = regression.get_config("irmv1,smoke")
    c.seeds = (5, 3, 5, 3, 9)
    with pytest.raises(ConfigError, match=r"config\.seeds=\(5, 3, 5, 3, 9\).*repeated: 3, 5"):
        irm.validate(c)
    c.seeds = (5, 3, 9)
    irm.validate(c)
    c = noisy_classification.get_config("smoke")  # the shared check: every family refuses them
    c.seeds = (1, 1)
    with pytest.raises(ConfigError, match="repeated: 1"):
        config_checks.learner_seeds(c)


def test_study_order_without_a_study_is_refused():
    c = regression.get_config("irmv1,smoke")
    c.study_order = ("base_erm", "irmv1")
    with pytest.raises(ConfigError, match=r"config\.study_order=\('base_erm', 'irmv1'\)"):
        irm.validate(c)


@pytest.mark.parametrize("family, overrides, key, value", [
    ("irm", {"criterion.name": "nope"}, "criterion.name", "nope"),
    ("irm", {"model.name": "resnet18_4"}, "model.name", "resnet18_4"),
    ("classify", {"model.name": "mlp_0x3"}, "model.name", "mlp_0x3"),
    ("classify", {"model.name": "mlp_8", "model.batchnorm": True}, "model.batchnorm", True),
    ("classify", {"evals.test.split": "holdout"}, "evals.test.split", "holdout"),
    ("classify", {"evals.test.type": "regression"}, "evals.test.type", "regression"),
    ("classify", {"evals.test.every": 0}, "evals.test.every", 0),
    ("measures", {"metric": "lipschitz"}, "metric", "lipschitz"),
    ("measures", {"normalization": "l2"}, "normalization", "l2"),
    ("measures", {"max_iters": 0}, "max_iters", 0),
    ("measures", {"num_probes": -1}, "num_probes", -1),
    ("measures", {"rel_error": 0.0}, "rel_error", 0.0),
    ("measures", {"max_probes": 100}, "max_probes", 100),  # not a multiple of 16
    ("measures", {"probe_space": "both"}, "probe_space", "both"),
])
def test_drivers_name_the_config_key_of_a_value_the_library_refuses(family, overrides, key,
                                                                     value):
    """The library names its own arguments (make_classifier: name=...); a driver's validate
    names the config key, whether it checks the value itself or maps the library's error."""
    get, validate = {"irm": (regression.get_config, irm.validate),
                     "classify": (noisy_classification.get_config, classify.validate),
                     "measures": (jacobian.get_config, measures.validate)}[family]
    c = get("smoke")
    for k, v in overrides.items():
        section, _, leaf = k.rpartition(".")
        (c if not section else functools.reduce(getattr, section.split("."), c))[leaf] = v
    with pytest.raises(ConfigError) as err:
        validate(c)
    assert str(err.value).startswith(f"config.{key}={value!r} is invalid; allowed: ")


def test_config_keys_maps_only_the_arguments_it_names():
    def library(**bad):
        (argument, value), = bad.items()
        raise ArgumentError("library", argument, value, "something else")

    with pytest.raises(ConfigError, match=r"^config\.model\.name='x' is invalid; allowed: som"):
        with config_checks.config_keys(name="model.name"):
            library(name="x")
    with pytest.raises(ArgumentError, match=r"^library: width=3 is invalid"):
        with config_checks.config_keys(name="model.name"):
            library(width=3)
    err = ArgumentError("evaluator 'a'", "split", "b", "one of c", path="specs.a.split")
    with pytest.raises(ConfigError, match=r"^config\.evals\.a\.split='b' is invalid"):
        with config_checks.config_keys(specs="evals"):
            raise err
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert pickle.loads(pickle.dumps(err)).path == "specs.a.split"


def _message(check, value, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        check(ml_collections.ConfigDict({"x": value}), "x", *args, **kwargs)
    return str(err.value)


def test_ranges_are_printed_as_they_are_checked():
    inf, nan = math.inf, math.nan
    assert _message(config_checks.number, inf, 0.0, low_open=True).endswith(
        "allowed: a finite number > 0")
    assert _message(config_checks.number, nan, 0.0).endswith("allowed: a finite number >= 0")
    assert _message(config_checks.number, -inf).endswith("allowed: a finite number")
    assert _message(config_checks.number, 2.0, 0.0, 1.0, high_open=True).endswith(
        "allowed: a finite number in [0, 1)")
    assert _message(config_checks.number, 0, 1, integer=True).endswith("an integer >= 1")
    assert _message(config_checks.number, 1.5, integer=True).endswith("allowed: an integer")
    msg = _message(config_checks.numbers, (0.2, nan), 0.0, 1e6, low_open=True)
    assert msg == "config.x=(0.2, nan) is invalid; allowed: finite numbers in (0, 1000000]"
    assert _message(config_checks.numbers, (0.1, inf), 0.0, low_open=True).endswith(
        "allowed: finite numbers > 0")


def test_tuple_overrides_read_nan_and_inf_as_floats():
    parse = cli._TupleParser().parse
    assert parse("(0.2,-inf)") == (0.2, -math.inf)
    (x,) = parse("nan")
    assert math.isnan(x)
    assert parse("(1,2)") == (1, 2) and parse("abc") == ("abc",)
    assert parse("('nan', 'a')") == ("nan", "a")  # quoted strings stay strings


def test_unknown_key_names_the_level_and_its_keys():
    c = regression.get_config("smoke")
    assert cli.unknown_key(c, "optim.lr") is None
    assert cli.unknown_key(c, "data.train_sigmas") is None
    why = cli.unknown_key(c, "optim.lrr")
    assert why.startswith("unknown config key config.optim.lrr (did you mean config.optim.lr?)")
    assert why.endswith("keys allowed in config.optim: " + ", ".join(c.optim.keys()))
    assert "config.optim.lr is a float" in cli.unknown_key(c, "optim.lr.x")
    argv = ["prog", "--config", "f.py:smoke", "--config.a.b=1", "--noconfig.c", "--workdir=w"]
    assert cli.override_keys(argv) == ["a.b", "c"]
    assert cli.config_argument(argv, "default.py") == "f.py:smoke"
    assert cli.config_argument(["prog"], "default.py") == "default.py"


# ---------------------------------------------------------------------------------------------
# Output files: readable by the group and others as the umask allows; no temp files left


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_json_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "a.json"
        wd.write_json_atomic(str(path), {"x": 1})
        metrics = tmp_path / "metrics.jsonl"
        metrics.write_text('{"step": 1}\n{"step": 2}\n')
        wd.truncate_metrics(str(metrics), 1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert metrics.stat().st_mode & 0o777 == 0o666 & ~umask
    assert wd.read_metrics(str(metrics)) == [{"step": 1}]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "metrics.jsonl"]


def test_opening_a_workdir_removes_a_killed_writers_temp_files(tmp_path):
    d = tmp_path / "run"
    (d / "learners").mkdir(parents=True)
    stale = [d / ".tmp-dead01.json", d / "learners" / ".tmp-dead02.jsonl"]
    fresh = d / ".tmp-live03.json"  # another writer's file in flight: seconds old
    kept = [d / "notes.json", d / "learners" / ".tmp-other.txt"]
    for p in (*stale, fresh, *kept):
        p.write_text("{")
    old = os.path.getmtime(fresh) - 2 * wd.STALE_TEMP_S
    for p in stale + kept:
        os.utime(p, (old, old))
    with wd.Workdir(str(d), {"a": 1}):
        pass
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in kept)


# ---------------------------------------------------------------------------------------------
# parse_arg: one variant parser for every config file


def test_parse_arg_variants_and_values():
    parse = config_args.parse_arg
    a = parse("adareg,smoke,num_seeds=4,lr=1e-3,debug", variants=("adareg", "smoke"),
              num_seeds=32, lr=0.1, debug=False, tag="x")
    assert a.variants == ("adareg", "smoke")
    assert (a.num_seeds, a.lr, a.debug, a.tag) == (4, 1e-3, True, "x")
    assert parse("lr=1", lr=0.1).lr == 1.0 and isinstance(parse("lr=1", lr=0.1).lr, float)
    assert parse("tag=7", tag="x").tag == "7"
    assert parse(None, variants=("smoke",)).variants == ()
    assert [config_args.autotype(t) for t in ("3", "2.5", "True", "false", "abc")] == [
        3, 2.5, True, False, "abc"]


@pytest.mark.parametrize("arg,match", [
    ("smoek", r"unknown config variant 'smoek'; allowed: adareg, smoke; name=value for num_seeds"),
    ("smoke,nm=3", r"unknown config argument 'nm=3' in 'smoke,nm=3'"),
    ("num_seeds=abc", r"config argument 'num_seeds=abc': expected int"),
    ("num_seeds=true", r"expected int"),
    ("num_seeds", r"unknown config variant 'num_seeds'"),  # not a bool: needs =value
])
def test_parse_arg_refuses_unknown_parts(arg, match):
    with pytest.raises(ValueError, match=match):
        config_args.parse_arg(arg, variants=("adareg", "smoke"), num_seeds=32)


def test_parse_arg_single_variant():
    with pytest.raises(ValueError, match="names 2 variants; allowed: one of a, b"):
        config_args.parse_arg("a,b", variants=("a", "b"), combine=False)
    assert config_args.parse_arg("b", variants=("a", "b"), combine=False).variants == ("b",)


def test_config_files_keep_their_variants():
    for arg in (None, *regression.OVERRIDES, "study", "paper", "smoke", "study,smoke",
                "paper,smoke", "irmv1,smoke"):
        regression.get_config(arg)
    assert regression.get_config("adareg,smoke").name == "adareg"
    assert regression.get_config("study,smoke").num_seeds == 4
    assert regression.get_config(None).criterion.name == "irmv1"
    c = noisy_classification.get_config("cifar10_resnet18,smoke")
    assert (c.data.name, c.model.name, c.epochs) == ("cifar10", "mlp_32", 4)
    assert noisy_classification.get_config(None).data.name == "digits"
    assert len(noisy_classification.get_sweep("smoke")) == 2
    assert jacobian.get_config("smoke").num_samples == 40
    assert jacobian.get_config("seed_compat").seed_compat
    for get, arg in ((regression.get_config, "smok"), (noisy_classification.get_config, "x"),
                     (jacobian.get_config, "smoke,seed_compat"),
                     (noisy_classification.get_sweep, "big")):
        with pytest.raises(ValueError, match="allowed"):
            get(arg)


# ---------------------------------------------------------------------------------------------
# Packaging: one distribution name, irmx; configs/ and launch/ ship inside it


def test_distribution_ships_only_irmx():
    import setuptools

    packages = setuptools.find_packages(ROOT, include=["irmx", "irmx.*"])
    assert {"irmx.configs.irm", "irmx.configs.measures", "irmx.launch"} <= set(packages)
    assert {p.split(".")[0] for p in packages} == {"irmx"}
    cfg = open(os.path.join(ROOT, "setup.cfg")).read()
    assert "include = irmx, irmx.*\n" in cfg
    assert "irmx-irm = irmx.launch.irm:main" in cfg


def test_no_sys_path_insert_anywhere():
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.ipynb"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    this = os.path.relpath(__file__, ROOT)
    offenders = [f for f in tracked if f != this and os.path.exists(os.path.join(ROOT, f))
                 and "sys.path.insert" in open(os.path.join(ROOT, f)).read()]
    assert not offenders


def test_console_script_runs_from_anywhere_with_its_default_config(tmp_path):
    """The installed irmx-irm from another folder: the default --config resolves next to the
    module, and an explicit installed config path works."""
    script = os.path.join(os.path.dirname(sys.executable), "irmx-irm")
    if not os.path.exists(script):
        pytest.skip("irmx is not installed in this environment (pip install -e .)")
    from irmx.launch import irm as launch_irm

    assert os.path.isfile(launch_irm.DEFAULT_CONFIG)
    installed = os.path.join(os.path.dirname(regression.__file__), "regression.py")
    runs = {
        "default": [script, "--print_config"],
        "explicit": [script, f"--config={installed}:adareg,smoke", "--print_config"],
    }
    procs = {name: subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, cmd in runs.items()}
    out = {}
    for name, proc in procs.items():
        out[name], err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-3000:])
    assert "name: irmv1" in out["default"] and "num_steps: 3000" in out["default"]
    assert "name: adareg" in out["explicit"] and "num_steps: 200" in out["explicit"]


@pytest.mark.slow
def test_wheel_holds_configs_and_launch_under_irmx(tmp_path):
    """``pip wheel .``: the symlinked irmx/configs and irmx/launch are copied in as files, and no
    top-level configs/ or launch/ package is installed."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "irmx/configs/irm/regression.py" in names and "irmx/launch/irm.py" in names
    assert {n.split("/")[0] for n in names} == {"irmx", "irmx-0.1.0.dist-info"}
    top_level = [n for n in names if n.endswith("top_level.txt")]
    assert not top_level or zipfile.ZipFile(tmp_path / wheel).read(top_level[0]) == b"irmx\n"


def test_ctrl_c_is_one_line_with_status_interrupted(tmp_path):
    """SIGINT mid-run: status 'interrupted', one line (no traceback), exit 130 (resuming after
    an interruption is tested in test_workdir)."""
    import json
    import signal
    import time

    cmd = [sys.executable, "launch/irm.py", "--config=configs/irm/regression.py:irmv1,smoke",
           "--config.num_steps=2000000", "--config.chunk_steps=2000",
           "--config.checkpoint_every=20000", f"--workdir={tmp_path / 'run'}", "--noprogress"]
    env = dict(os.environ, IRMX_JAX_CACHE="")
    # SIGINT as a terminal delivers it: a worker process (pytest-xdist) may ignore SIGINT, and a
    # child that inherits SIG_IGN never sees it (Python installs its handler only over SIG_DFL)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    status = tmp_path / "run" / "status.json"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not (
            status.exists() and json.loads(status.read_text()).get("step", 0) > 0):
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err, status.read_text() if status.exists() else None)
    assert "Traceback" not in err and "re-run the same command to resume" in err
    state = json.loads(status.read_text())
    assert state["state"] == "interrupted" and state["step"] > 0
