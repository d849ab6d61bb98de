"""The run loader (``irmx.io.runs``): a workdir's config, family, program and checkpoints.

One smoke classifier run (2 seeds, 4 epochs of 4 steps, numbered checkpoints at steps 0, 8,
16) is trained once; restores are compared with the state the program itself reaches from its
init (its chunks run here), a learner subset with the slice, and the template path is checked
never to run the program's init. A copy of the run grown to 3 seeds has two cohorts.
"""

import dataclasses
import os
import shutil
import types

import jax
import numpy as np
import pytest

from irmx.configs.irm import regression
from irmx.configs.measures import noisy_classification
from irmx.experiments import classify, irm
from irmx.io import runs
from irmx.io import workdir as wd
from irmx.learners import count_compilations

SEEDS = (42, 43)


def smoke_config(seeds=SEEDS):
    c = noisy_classification.get_config("smoke")
    c.seeds = seeds
    return c


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_chunks(program, coords=None):
    """The program's own state at its end: init, then every chunk (as the runner does)."""
    state, data = program.init(coords)
    for _ in range(program.num_steps // program.chunk_steps):
        state, _ = program.chunk(state, data)
    return state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = smoke_config()
    workdir = str(tmp_path_factory.mktemp("runs") / "classify")
    classify.run(config, workdir, progress=False)
    program = classify.build_program(config)
    return types.SimpleNamespace(config=config, workdir=workdir, program=program,
                                 final=run_chunks(program), init=program.init()[0])


def test_load_reads_config_family_and_steps(trained):
    run = runs.load(trained.workdir)
    assert run.family == "classify" and run.path == os.path.abspath(trained.workdir)
    assert run.config.to_dict() == wd.read_json(
        os.path.join(trained.workdir, "config.json"))["config"]
    assert run.checkpoint_steps() == (0, 8, 16)
    assert run.axis.size == 2 and list(run.axis.coords["seed"]) == list(SEEDS)
    assert len(run.cohorts()) == 1


def test_restore_equals_the_programs_own_state(trained):
    run = runs.load(trained.workdir)
    final = run.restore(16)
    assert set(final) == {"params", "model_state"}
    assert_trees_equal(final["params"], trained.final.params)
    assert_trees_equal(final["model_state"], trained.final.model_state)
    assert_trees_equal(run.restore(0)["params"], trained.init.params)
    other = run.restore(16, items=("step", "opt_state", "diverged"))
    assert list(np.asarray(other["step"])) == [16, 16]
    assert_trees_equal(other["opt_state"], trained.final.opt_state)
    assert not np.asarray(other["diverged"]).any()
    assert_trees_equal(run.variables(16), {**trained.final.params,
                                           **trained.final.model_state})
    x = np.zeros((3, 8, 8, 1), np.float32)  # the restored variables drive the loaded model
    assert run.model.apply(run.variables(16, learners=0), x).shape == (3, 10)


def test_a_learner_subset_is_the_slice(trained):
    run = runs.load(trained.workdir)
    full = run.restore(16)["params"]
    for learners, index in (([1], [1]), ([1, 0], [1, 0]), ((0,), [0]), (1, 1)):
        assert_trees_equal(run.restore(16, learners=learners)["params"],
                           jax.tree.map(lambda a, i=index: a[np.asarray(i)], full))
    assert run.checkpoint_steps(learners=[1]) == (0, 8, 16)


def test_the_template_never_runs_the_programs_init(trained, monkeypatch):
    calls = []
    build = classify.build_program

    def counting_build(config, dataset=None):
        program = build(config, dataset)
        init = program.init

        def counted(coords=None):
            out = init(coords)
            calls.append(all(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(out[0])))
            return out

        return dataclasses.replace(program, init=counted)

    monkeypatch.setattr(classify, "build_program", counting_build)
    run = runs.load(trained.workdir)
    with count_compilations() as compiled:
        params = run.restore(8, learners=[0])["params"]
    assert calls == [True]  # traced once by jax.eval_shape, never run on arrays
    assert compiled == [0]  # nothing compiled either
    assert jax.tree.leaves(params)[0].shape[0] == 1


def test_a_grown_grid_restores_across_cohorts(trained, tmp_path):
    workdir = str(tmp_path / "grown")
    shutil.copytree(trained.workdir, workdir)
    config = smoke_config(SEEDS + (44,))
    classify.run(config, workdir, progress=False)  # trains seed 44 only, in a second cohort
    run = runs.load(workdir)
    cohorts = run.cohorts()
    assert sorted(len(c.learner_ids) for c in cohorts) == [1, 2]
    assert run.checkpoint_steps() == (0, 8, 16)
    params = run.restore(16)["params"]
    program = classify.build_program(config)
    alone = run_chunks(program, program.axis.numeric_coords([2]))
    assert_trees_equal(jax.tree.map(lambda a: a[:2], params), trained.final.params)
    assert_trees_equal(jax.tree.map(lambda a: a[2:], params), alone.params)
    assert_trees_equal(run.restore(16, learners=[2, 0])["params"],
                       jax.tree.map(lambda a: a[np.array([2, 0])], params))


def test_an_irm_run_loads_and_restores(tmp_path):
    config = regression.get_config("irmv1,smoke")
    config.num_seeds = 2
    workdir = str(tmp_path / "irm")
    irm.run(config, workdir, progress=False, report=False)
    run = runs.load(workdir)
    assert run.family == "irm" and run.checkpoint_steps()[-1] == config.num_steps
    params = run.restore(config.num_steps)["params"]
    assert_trees_equal(params, run_chunks(irm.build_program(config)).params)
    x = np.ones((4, config.data.dim), np.float32)
    assert run.model.apply(run.variables(config.num_steps, learners=1), x).shape[0] == 4


def _write_run(path, config: dict, **extra):
    os.makedirs(path, exist_ok=True)
    wd.write_json_atomic(os.path.join(path, "config.json"),
                         {"irmx_version": "0", "config": config, **extra})
    return str(path)


def test_family_is_read_or_inferred(tmp_path):
    classify_cfg = smoke_config().to_dict()
    irm_cfg = regression.get_config("irmv1,smoke").to_dict()
    assert runs.load(_write_run(tmp_path / "a", classify_cfg)).family == "classify"
    assert runs.load(_write_run(tmp_path / "b", irm_cfg)).family == "irm"
    assert runs.load(_write_run(tmp_path / "c", irm_cfg, family="classify")).family == "classify"
    assert runs.infer_family({"metric": "jacobian", "source": "x"}) == "measures"
    assert runs.infer_family({"lr": 1.0}) is None


def test_errors_name_the_workdir_and_what_is_wrong(trained, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "empty").mkdir()
    study = regression.get_config("study,smoke").to_dict()
    cases = [
        (str(tmp_path / "absent"), "no such run workdir"),
        (str(a_file), "not a run workdir (not a directory)"),
        (str(tmp_path / "empty"), "not a run workdir (no config.json)"),
        (_write_run(tmp_path / "zoo", {"lr": 1.0}, family="zoo"),
         "a 'zoo' run, which has no model checkpoints to load; loadable families: classify, irm"),
        (_write_run(tmp_path / "what", {"lr": 1.0}),
         "cannot tell which family wrote this run"),
        (_write_run(tmp_path / "study", study), "an IRM study of several experiments"),
    ]
    for path, expected in cases:
        with pytest.raises(runs.RunError) as err:
            runs.load(path)
        message = str(err.value)
        assert message.startswith(os.path.abspath(path)) and expected in message, message
        assert "\n" not in message and isinstance(err.value, ValueError)
    run = runs.load(trained.workdir)
    for kwargs, expected in [
        (dict(step=12), "no checkpoint at step 12; saved steps: 0, 8, 16"),
        (dict(step="16"), "no checkpoint at step '16'; saved steps: 0, 8, 16"),
        (dict(step=16, items=("params", "grads")), "items=('params', 'grads') is invalid; "
         "allowed: step, params, opt_state"),
        (dict(step=16, learners=[0, 2]), "learners=[0, 2] is invalid; allowed: an index or a "
         "list of indices in [0, 1] (the run has 2 learners)"),
        (dict(step=16, learners=True), "learners=True is invalid"),
    ]:
        with pytest.raises(runs.RunError) as err:
            run.restore(**kwargs)
        assert str(err.value).startswith(run.path + ": ") and expected in str(err.value)
    # a run whose checkpoints are gone (or not yet written) has no steps
    bare = _write_run(tmp_path / "bare", smoke_config().to_dict(), family="classify")
    assert runs.load(bare).checkpoint_steps() == ()
    with pytest.raises(runs.RunError, match="no checkpoint at step 0; saved steps: none"):
        runs.load(bare).restore(0)
