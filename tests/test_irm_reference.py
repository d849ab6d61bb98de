"""The IRM reference's synthetic protocol (``configs/irm/regression.py:paper``) against
independent numpy formulas: its vector-dummy penalty and summed risk, their gradients, the exact
least-squares compression of an environment, closed-form ERM, and the paper study end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx import train
from irmx.config_checks import ConfigError
from irmx.configs.irm.regression import SETTINGS, get_config
from irmx.data import sem as sem_lib
from irmx.experiments import irm
from irmx.irm import criteria, reference
from irmx.irm.penalties import irmv1_penalty, irmv1_vector_penalty
from irmx.nets import make_model

D = 6


def _envs(seed=0, e=2, n=50, d=D):
    rs = np.random.RandomState(seed)
    x = rs.randn(e, n, d).astype(np.float32)
    y = (x @ rs.randn(d) + 0.3 * rs.randn(e, n)).astype(np.float32)
    return x, y


def _phi(seed=1, d=D):
    rs = np.random.RandomState(seed)
    return (np.eye(d) + 0.1 * rs.randn(d, d)).astype(np.float32)


def np_reference_loss(phi, x_E, y_E, r):
    """The reference's objective in float64 numpy (models.py InvariantRiskMinimization.train):
    r * sum_e MSE_e + (1 - r) * sum_e mean_k (dMSE_e/dw_k at w = 1)^2, w = ones(D)."""
    w = np.ones(phi.shape[1])
    error = penalty = 0.0
    for x, y in zip(x_E, y_E):
        f = x @ phi
        resid = f @ w - y
        error += np.mean(resid**2)
        grad_w = 2.0 / len(y) * f.T @ resid
        penalty += np.mean(grad_w**2)
    return r * error + (1 - r) * penalty, error, penalty


def test_vector_penalty_is_the_reference_formula():
    x, y = _envs()
    phi = _phi()
    for e in range(2):
        got = irmv1_vector_penalty(lambda w, e=e: jnp.asarray(x[e]) @ phi @ w,
                                   jnp.asarray(y[e]), D)
        f = np.float64(x[e]) @ np.float64(phi)
        g = 2.0 / len(y[e]) * f.T @ (f.sum(1) - y[e])
        np.testing.assert_allclose(float(got), np.mean(g**2), rtol=1e-5)
        # not the scalar dummy's value: (sum_k g_k)^2 != mean_k g_k^2 in general
        scalar = irmv1_penalty(jnp.asarray(f.sum(1), jnp.float32), jnp.asarray(y[e]))
        assert abs(float(scalar) - np.mean(g**2)) > 1e-3 * np.mean(g**2)


def test_reference_loss_terms_and_gradients_match_numpy():
    """Terms (summed risk, summed vector penalty) and the gradient of the convex mix
    r * g_e + (1 - r) * g_p w.r.t. Phi equal the reference objective's value and its float64
    central finite differences."""
    x, y = _envs(seed=3)
    phi = _phi(seed=4)
    model = make_model("phi_w")
    params = {"params": {"phi": jnp.asarray(phi)}}
    loss_terms = criteria.make_loss_terms(model.apply, "irmv1", penalty="vector_dummy",
                                          risk_reduction="sum")
    terms, _ = loss_terms(params, (jnp.asarray(x), jnp.asarray(y)), None)
    _, err, pen = np_reference_loss(np.float64(phi), np.float64(x), np.float64(y), 0.3)
    np.testing.assert_allclose(np.asarray(terms), [err, pen], rtol=1e-5)

    r = 0.3
    grads = train.term_gradients(lambda p: loss_terms(p, (jnp.asarray(x), jnp.asarray(y)),
                                                      None), params)[1]
    g_phi = np.asarray(r * grads["params"]["phi"][0] + (1 - r) * grads["params"]["phi"][1])
    fd = np.zeros((D, D))
    h = 1e-6
    for i in range(D):
        for j in range(D):
            p_hi, p_lo = np.float64(phi), np.float64(phi)
            p_hi[i, j] += h
            p_lo[i, j] -= h
            fd[i, j] = (np_reference_loss(p_hi, np.float64(x), np.float64(y), r)[0]
                        - np_reference_loss(p_lo, np.float64(x), np.float64(y), r)[0]) / (2 * h)
    np.testing.assert_allclose(g_phi, fd, rtol=2e-4, atol=1e-4)


def test_compressed_environment_is_exact_for_models_linear_in_x():
    """dim+1 rows give the same risk, both penalties and their gradients as 400 samples."""
    x, y = _envs(seed=5, n=400)
    xc, yc = jax.vmap(sem_lib.compress_environment)(jnp.asarray(x), jnp.asarray(y))
    assert xc.shape == (2, D + 1, D) and yc.shape == (2, D + 1)
    rs = np.random.RandomState(6)
    for _ in range(3):
        v = rs.randn(D)
        for e in range(2):
            full = np.mean((np.float64(x[e]) @ v - y[e]) ** 2)
            np.testing.assert_allclose(np.mean((np.float64(xc[e]) @ v - yc[e]) ** 2), full,
                                       rtol=1e-4)
    model = make_model("phi_w")
    params = {"params": {"phi": jnp.asarray(_phi(seed=7))}}
    for penalty in criteria.PENALTIES:
        loss_terms = criteria.make_loss_terms(model.apply, "irmv1", penalty=penalty,
                                              risk_reduction="sum")
        full = train.term_gradients(
            lambda p, f=loss_terms: f(p, (jnp.asarray(x), jnp.asarray(y)), None), params)
        comp = train.term_gradients(lambda p, f=loss_terms: f(p, (xc, yc), None), params)
        np.testing.assert_allclose(np.asarray(comp[0]), np.asarray(full[0]), rtol=2e-4)
        np.testing.assert_allclose(np.asarray(comp[1]["params"]["phi"]),
                                   np.asarray(full[1]["params"]["phi"]), rtol=2e-3, atol=1e-5)


def test_least_squares_solver_is_numpy_lstsq_without_intercept():
    x, y = _envs(seed=8, e=3, n=100)
    w = irm.least_squares(jnp.asarray(x.reshape(-1, D)), jnp.asarray(y.reshape(-1)))
    want = np.linalg.lstsq(np.float64(x.reshape(-1, D)), np.float64(y.reshape(-1)),
                           rcond=None)[0]
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-4, atol=1e-5)


def test_paper_erm_is_pooled_least_squares_on_all_three_environments():
    c = irm.experiment_config(get_config("paper,smoke"), "erm")
    program = irm.build_program(c)
    assert program.chunk is None  # closed form: no training steps
    state, data = program.init()
    x, y = jax.device_get(data["train"])
    assert x.shape[1] == 3  # sigma 0.2, 2 and 5 pooled, as the reference's ERM
    for n in range(x.shape[0]):
        want = np.linalg.lstsq(np.float64(x[n].reshape(-1, x.shape[-1])),
                               np.float64(y[n].reshape(-1)), rcond=None)[0]
        got = np.asarray(state["params"]["Dense_0"]["kernel"][n, :, 0])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_paper_irm_config_is_the_reference_protocol():
    c = get_config("paper")
    sub = irm.experiment_config(c, "irm")
    assert sub.criterion.penalty == "vector_dummy" and sub.criterion.risk_reduction == "sum"
    assert sub.criterion.mixing == "convex" and sub.criterion.anneal_steps == 0
    assert sub.model.name == "phi_w" and sub.optim.name == "adam" and sub.optim.lr == 1e-3
    assert tuple(sub.vmapped.erm_weight) == (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert sub.select_by == "heldout_mse" and sub.num_steps == 100000
    assert tuple(sub.data.train_sigmas) == (0.2, 2.0) and sub.data.heldout_sigma == 5.0
    assert not sub.data.erm_on_all_envs and sub.data.num_samples == 1000 and sub.data.dim == 10
    alt = irm.experiment_config(get_config("paper,scalar_dummy"), "irm")
    assert alt.criterion.penalty == "scalar_dummy" and alt.criterion.risk_reduction == "mean"
    every = get_config("paper,all_settings")
    assert len(every.study) == 3 * len(SETTINGS)
    assert irm.experiment_config(every, "PES_icp").data.setting == "PES"
    for name in every.study:
        irm.validate(irm.experiment_config(every, name))


@pytest.mark.parametrize("setter,key", [
    (lambda c: setattr(c.criterion, "penalty", "vector_dummy"), "criterion.penalty"),
    (lambda c: setattr(c.data, "compress", True), "data.compress"),
    (lambda c: setattr(c, "solver", "least_squares"), "solver"),
    (lambda c: setattr(c, "solver", "newton"), "solver"),
    (lambda c: setattr(c.criterion, "risk_reduction", "max"), "criterion.risk_reduction"),
    (lambda c: setattr(c, "reference_method", "VREx"), "reference_method"),
    (lambda c: setattr(c, "icp_alpha", 1.5), "icp_alpha"),
])
def test_reference_settings_are_validated(setter, key):
    c = get_config("irmv1,smoke")  # model linear with a bias
    setter(c)
    with pytest.raises(ConfigError, match=rf"config\.{key}="):
        irm.validate(c)


def test_modifiers_need_the_paper_variant():
    with pytest.raises(ValueError, match="paper,scalar_dummy"):
        get_config("study,scalar_dummy")


def test_reference_results_are_the_published_file():
    """A few lines of synthetic_results.txt's 200-repetition means, as the README quotes them."""
    assert reference.RESULTS["FEU"]["IRM"][0] == pytest.approx(0.2565, abs=1e-4)
    assert reference.RESULTS["FEU"]["ERM"][2] == pytest.approx(0.8207, abs=1e-4)
    assert set(reference.RESULTS) == set(SETTINGS)


def test_paper_study_smoke_prints_reference_columns(tmp_path, capsys):
    c = get_config("paper,smoke")
    c.num_seeds = 2
    study = irm.run(c, str(tmp_path / "paper"), progress=True)
    out = capsys.readouterr().out
    assert "reference causal" in out and "0.8208 +- 0.0138" in out  # FEU ERM, the reference
    assert set(study["experiments"]) == {"erm", "icp", "irm"}
    erm = study["experiments"]["erm"]["causal_error"]["mean"]
    assert 0.6 < erm < 1.0  # ERM on FEU leans on the effects, as in the reference (0.82)
    assert study["reference"]["repetitions"] == 200
    assert (tmp_path / "paper" / "plots" / "errors_by_experiment.png").exists()
