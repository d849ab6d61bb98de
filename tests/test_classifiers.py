"""Image classifiers: parameter counts by formula, shapes, a numpy forward reference, the seed's
initialisations (PyTorch default, kaiming fan_out, Fixup) and the name registry.

Initialising a ResNet compiles ~40 random-number ops, and XLA:CPU's optimiser needs over a
second for each threefry (jax's default partitionable threefry), so the init fixture compiles at
``xla_backend_optimization_level`` 0 (same random bits, ~4x faster to compile). Forward tests
fill parameters from ``eval_shape`` with numpy draws and compile no initialiser at all.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx.errors import ArgumentError
from irmx.nets import make_model
from irmx.nets.classifiers import MCNN, MLPClassifier, ResNet18K, make_classifier


def count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def shapes(model, x_shape):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, jnp.float32))


def random_params(model, x_shape, seed=0):
    """Parameters of ``model`` filled with N(0, 0.3^2) numpy draws (no initialiser compiled)."""
    rs = np.random.RandomState(seed)
    tree = shapes(model, x_shape)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rs.randn(*s.shape), jnp.float32), tree)


# ---------------------------------------------------------------------------------------------
# Parameter counts against closed forms


def resnet18_count(k, c_in, num_classes, batchnorm=False, blocks=(2, 2, 2, 2)):
    """CIFAR ResNet-18 of width k: 3x3 convs (bias unless BN), bias-free 1x1 shortcuts, BN
    (scale, bias) after stem and every block conv, linear head."""
    bias = 0 if batchnorm else 1
    bn = 2 if batchnorm else 0

    def conv3(cin, cout):
        return 9 * cin * cout + bias * cout + bn * cout

    total = conv3(c_in, k)
    cin = k
    for s, n in enumerate(blocks):
        w = k * 2**s
        for b in range(n):
            total += conv3(cin, w) + conv3(w, w)
            if cin != w or (s > 0 and b == 0):
                total += cin * w
            cin = w
    return total + 8 * k * num_classes + num_classes


def test_resnet18_64_has_the_cifar_resnet18_count():
    params = shapes(ResNet18K(64), (1, 32, 32, 3))["params"]
    expected = resnet18_count(64, 3, 10)
    assert count(params) == expected
    assert abs(expected - 11.17e6) < 0.01e6  # 11,168,266: the no-BN CIFAR ResNet-18
    # resnet34: the seed's (3, 4, 6, 3) variant.
    p34 = shapes(make_classifier("resnet34", 10), (1, 32, 32, 3))["params"]
    assert count(p34) == resnet18_count(64, 3, 10, blocks=(3, 4, 6, 3))


@pytest.mark.parametrize("k,c_in,num_classes", [(1, 1, 10), (5, 3, 7), (16, 3, 100)])
def test_resnet18k_count_formula(k, c_in, num_classes):
    params = shapes(ResNet18K(k, num_classes), (2, 8, 8, c_in))["params"]
    assert count(params) == resnet18_count(k, c_in, num_classes)


def test_resnet18k_batchnorm_structure():
    variables = shapes(ResNet18K(4, batchnorm=True), (2, 8, 8, 3))
    assert count(variables["params"]) == resnet18_count(4, 3, 10, batchnorm=True)
    stats = variables["batch_stats"]
    assert set(stats) == {"bn_stem"} | {f"stage{s}_block{b}" for s in range(1, 5) for b in (0, 1)}
    block = variables["params"]["stage2_block0"]
    assert set(block["conv1"]) == {"kernel"}  # the seed: bias = not use_batch_norm
    assert set(block["shortcut"]) == {"kernel"}  # torchvision conv1x1: never a bias, never BN
    assert "bn_shortcut" not in block


def test_mcnn_and_mlp_counts():
    k, c, num_classes = 3, 1, 10
    expected = (9 * c * k + k) + (9 * k * 2 * k + 2 * k) + (9 * 2 * k * 4 * k + 4 * k)
    expected += (9 * 4 * k * 8 * k + 8 * k) + 8 * k * num_classes + num_classes
    assert count(shapes(MCNN(k), (2, 8, 8, c))["params"]) == expected
    mlp = shapes(MLPClassifier((32, 16), 10), (2, 8, 8, 1))["params"]
    assert count(mlp) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)


def test_default_models_have_params_only():
    for model in (ResNet18K(2), MCNN(2), MLPClassifier((8,))):
        assert set(shapes(model, (2, 8, 8, 1))) == {"params"}


# ---------------------------------------------------------------------------------------------
# Shapes and a numpy reference forward pass (PyTorch conv semantics)


def test_stage_widths_and_spatial_sizes():
    k, model, x_shape = 3, ResNet18K(3), (2, 9, 9, 1)
    params = random_params(model, x_shape)
    for s in range(1, 5):
        for b in (0, 1):
            kernel = params["params"][f"stage{s}_block{b}"]["conv2"]["kernel"]
            assert kernel.shape == (3, 3, k * 2 ** (s - 1), k * 2 ** (s - 1))
    apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))
    _, inter = apply(params, jnp.ones(x_shape))
    size = 9
    for s in range(1, 5):
        if s > 1:
            size = (size + 2 - 3) // 2 + 1  # torch Conv2d(3, stride 2, padding 1): 9, 5, 3, 2
        out = inter["intermediates"][f"stage{s}_block1"]["__call__"][0]
        assert out.shape == (2, size, size, k * 2 ** (s - 1))
    assert inter["intermediates"]["__call__"][0].shape == (2, 10)


def np_conv(x, w, b, stride, pad):
    """Cross-correlation, NHWC x HWIO, zero padding ``pad`` each side (torch.nn.Conv2d)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
    return out + (0 if b is None else b)


def np_resnet18k(p, x):
    relu = lambda a: np.maximum(a, 0)
    x = relu(np_conv(x, p["stem"]["kernel"], p["stem"]["bias"], 1, 1))
    for s in range(1, 5):
        for b in (0, 1):
            blk = p[f"stage{s}_block{b}"]
            stride = 2 if (s > 1 and b == 0) else 1
            out = relu(np_conv(x, blk["conv1"]["kernel"], blk["conv1"]["bias"], stride, 1))
            out = np_conv(out, blk["conv2"]["kernel"], blk["conv2"]["bias"], 1, 1)
            short = x if "shortcut" not in blk else np_conv(x, blk["shortcut"]["kernel"], None,
                                                              stride, 0)
            x = relu(out + short)
    return x.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def np_mcnn(p, x):
    def pool(a):  # torch AvgPool2d(2): floor of odd sizes
        h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
        a = a[:, :h, :w]
        return a.reshape(a.shape[0], h // 2, 2, w // 2, 2, a.shape[3]).mean(axis=(2, 4))

    for i in range(1, 5):
        x = np.maximum(np_conv(x, p[f"conv{i}"]["kernel"], p[f"conv{i}"]["bias"], 1, 1), 0)
        if i in (2, 3):
            x = pool(x)
    return x.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.parametrize("name", ["resnet18_2", "cnn5_2", "mlp_7x5"])
def test_forward_matches_numpy_reference(name):
    model = make_classifier(name, 6)
    x_shape = (2, 9, 9, 2)  # odd sizes exercise stride-2 padding and floor pooling
    params = random_params(model, x_shape, seed=1)
    x = np.random.RandomState(2).rand(*x_shape).astype(np.float32)
    got = np.asarray(jax.jit(model.apply)(params, x))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    if name.startswith("resnet"):
        want = np_resnet18k(p, x.astype(np.float64))
    elif name.startswith("cnn"):
        want = np_mcnn(p, x.astype(np.float64))
    else:
        h = x.reshape(2, -1).astype(np.float64)
        for i in (1, 2):
            h = np.maximum(h @ p[f"dense{i}"]["kernel"] + p[f"dense{i}"]["bias"], 0)
        want = h @ p["head"]["kernel"] + p["head"]["bias"]
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_batchnorm_train_updates_stats_and_eval_is_pure():
    model = MCNN(2, batchnorm=True)
    x = jnp.asarray(np.random.RandomState(0).rand(4, 8, 8, 1), jnp.float32)
    variables = random_params(model, x.shape)
    variables["batch_stats"] = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train_apply(variables, x)
    assert logits.shape == (4, 10)
    mean1 = updates["batch_stats"]["bn1"]["mean"]
    assert float(jnp.abs(mean1).sum()) > 0  # 0.9 * 0 + 0.1 * batch mean
    # train=False: running statistics, nothing mutable, a pure function of (variables, x).
    eval_logits = jax.jit(model.apply)(variables, x)
    assert eval_logits.shape == (4, 10) and not np.allclose(eval_logits, logits)


# ---------------------------------------------------------------------------------------------
# Initialisation: the seed's schemes


def quick_init(model, seed):
    x, key = jnp.zeros((1, 8, 8, 3)), jax.random.key(seed)
    init = jax.jit(model.init).lower(key, x)
    return init.compile(compiler_options={"xla_backend_optimization_level": 0})(key, x)["params"]


@pytest.fixture(scope="module")
def inits():
    return {
        "pytorch": quick_init(ResNet18K(16), 0),
        "fixup": quick_init(ResNet18K(16, weight_init="fixup"), 1),
        "nkaiming": quick_init(MCNN(16, weight_init="nkaiming"), 2),
    }


def layers(params):
    """(path, kernel, bias or None) of every conv/dense layer."""
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    out = []
    for path, v in flat.items():
        if path.endswith("['kernel']"):
            bias = flat.get(path.replace("['kernel']", "['bias']"))
            out.append((path, np.asarray(v), None if bias is None else np.asarray(bias)))
    return out


def test_pytorch_default_init(inits):
    """torch.nn.Conv2d/Linear.reset_parameters: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    for path, w, b in layers(inits["pytorch"]):
        fan_in = int(np.prod(w.shape[:-1]))  # kh * kw * C_in (HWIO) or D_in (Dense)
        bound = 1.0 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound * (1 + 1e-6), path
        if w.size >= 4000:
            assert abs(w.std() - bound / math.sqrt(3)) < 0.03 * bound / math.sqrt(3), path
            assert np.abs(w).max() > 0.99 * bound, path  # uniform fills its support
        if "shortcut" in path:
            assert b is None, path
        else:
            assert b is not None and np.abs(b).max() <= bound * (1 + 1e-6), path
    big = [b for _, _, b in layers(inits["pytorch"]) if b is not None and b.size >= 128]
    assert big and all(b.std() > 0 for b in big)  # biases drawn, not zero


def test_fixup_init(inits):
    """Seed's fixup: block conv1 ~ N(0, 2 / fan_out / L), L = 8; conv2, head zero."""
    params = inits["fixup"]
    for s in range(1, 5):
        for b in (0, 1):
            blk = params[f"stage{s}_block{b}"]
            w = np.asarray(blk["conv1"]["kernel"])
            std = math.sqrt(2.0 / (9 * w.shape[-1])) / math.sqrt(8)
            assert abs(w.std() - std) < 0.06 * std
            assert np.all(np.asarray(blk["conv2"]["kernel"]) == 0)
            assert np.all(np.asarray(blk["conv1"]["bias"]) == 0)
            assert np.all(np.asarray(blk["conv2"]["bias"]) == 0)
    assert np.all(np.asarray(params["head"]["kernel"]) == 0)
    assert np.all(np.asarray(params["head"]["bias"]) == 0)
    stem = np.asarray(params["stem"]["kernel"])  # untouched by fixup: PyTorch default
    assert np.abs(stem).max() <= 1 / math.sqrt(27)


def test_nkaiming_init(inits):
    """kaiming_normal_(mode="fan_out"): conv std sqrt(2 / (C_out kh kw)), head sqrt(1 / K)."""
    params = inits["nkaiming"]
    for i in range(1, 5):
        w = np.asarray(params[f"conv{i}"]["kernel"])
        std = math.sqrt(2.0 / (9 * w.shape[-1]))
        assert abs(w.std() - std) < 0.05 * std
        if w.size > 10000:
            assert np.abs(w).max() > 3.5 * std  # a full normal, not a 2-sigma truncated one
        assert np.all(np.asarray(params[f"conv{i}"]["bias"]) == 0)
    head = np.asarray(params["head"]["kernel"])
    assert abs(head.std() - math.sqrt(1 / 10)) < 0.1 * math.sqrt(1 / 10)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_parses_names():
    m = make_classifier("resnet18_16", 100)
    assert isinstance(m, ResNet18K) and m.k == 16 and m.num_classes == 100
    assert make_classifier("resnet18", 10).k == 64
    assert tuple(make_classifier("resnet34", 10).stage_blocks) == (3, 4, 6, 3)
    m = make_classifier("cnn5_8", 10, batchnorm=True, weight_init="nkaiming")
    assert isinstance(m, MCNN) and m.k == 8 and m.batchnorm and m.weight_init == "nkaiming"
    m = make_classifier("mlp_256x128", 10)
    assert isinstance(m, MLPClassifier) and tuple(m.hidden) == (256, 128)
    assert tuple(make_classifier("mlp_64", 3).hidden) == (64,)
    # make_model delegates classifier names and keeps the regression models.
    m = make_model("resnet18_4", num_classes=7, weight_init="fixup")
    assert isinstance(m, ResNet18K) and m.k == 4 and m.num_classes == 7
    assert isinstance(make_model("mlp", hidden=(4,)), nn.Module)
    assert make_model("linear").features == 1


@pytest.mark.parametrize(
    "name", ["resnet18_0", "resnet50", "resnet18_", "cnn5_", "cnn5_0", "mlp_", "mlp_0x3",
             "ResNet18_16", "", "mlp_3x", "resnet18_4 "]
)
def test_registry_rejects_unknown_names(name):
    with pytest.raises(ValueError) as err:
        make_classifier(name, 10)
    msg = str(err.value)
    assert msg.startswith(f"make_classifier: name={name!r} is invalid; allowed: one of ")
    assert "resnet18_<k>" in msg and "cnn5_<k>" in msg and "mlp_<w>" in msg
    with pytest.raises(ArgumentError, match=r"^make_(model|classifier): name=.*resnet18_<k>"):
        make_model(name)  # a classifier-shaped name with a bad width: make_classifier's error
    with pytest.raises(ArgumentError, match=r"^make_model: name='vit' .* linear, phi_w, mlp, res"):
        make_model("vit")


def test_registry_rejects_bad_options():
    with pytest.raises(ArgumentError, match=r"^make_classifier: weight_init='fixup' is invalid; "
                                            r"allowed: one of pytorch, nkaiming$"):
        make_classifier("cnn5_4", 10, weight_init="fixup")  # the seed's mCNN has no fixup
    with pytest.raises(ArgumentError, match=r"^make_classifier: weight_init='xavier'"):
        make_classifier("resnet18_4", 10, weight_init="xavier")
    with pytest.raises(ArgumentError, match=r"^make_classifier: batchnorm=True .* False for "):
        make_classifier("mlp_8", 10, batchnorm=True)
    with pytest.raises(ArgumentError, match=r"^make_classifier: num_classes=0 .* integer >= 1"):
        make_classifier("resnet18_4", 0)
    with pytest.raises(ArgumentError, match=r"^ResNet18K: k=-2 is invalid"):
        shapes(ResNet18K(-2), (1, 8, 8, 1))
    with pytest.raises(ArgumentError, match=r"^MLPClassifier: hidden=0 is invalid"):
        shapes(MLPClassifier((4, 0)), (1, 8, 8, 1))
