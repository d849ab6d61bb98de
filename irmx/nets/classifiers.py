"""Image classifiers of the measures family (NHWC float32 input, logits out).

The architectures and initialisations follow the seed code of Gamba, Azizpour and Björkman,
"On the Lipschitz constant of deep networks and double descent" (BMVC 2023;
magamba/overparameterization, ``models/resnet.py`` and ``models/conv.py``), which in turn follow
the width-``k`` families of Nakkiran et al., "Deep double descent" (ICLR 2020):

* ``ResNet18K``: ResNet-18 of base width k (stages k, 2k, 4k, 8k; two BasicBlocks each; strides
  1, 2, 2, 2; 3x3 stride-1 stem, no max-pool; global average pool; linear head). The seed's
  ``ResNetNoBN``: no BatchNorm unless asked, convolutions then carry biases, the projection
  shortcut is a bias-free 1x1 convolution (torchvision ``conv1x1``) and never has BatchNorm.
* ``MCNN``: the seed's ``mCNN`` ("cnn5_k"): four 3x3 conv-ReLU layers of widths k, 2k, 4k, 8k,
  2x2 average pools after the second and third, global average pool, linear head.
* ``MLPClassifier``: flatten, ReLU layers, linear head; a cheap model for CPU work.

Initialisation (the seed's ``--weight-init``; its default, used by the README runs, is
``pytorch``):

* ``pytorch``: PyTorch's default for ``Conv2d`` and ``Linear``: ``kaiming_uniform_(a=sqrt(5))``,
  i.e. W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  with fan_in = C_in * kh * kw.
* ``nkaiming``: ``kaiming_normal_(mode="fan_out")``: conv W ~ N(0, 2 / (C_out kh kw)), head
  W ~ N(0, 1 / K) (gain of ``linear``), biases zero.
* ``fixup`` (ResNet only; Zhang et al., "Fixup initialization", ICLR 2019, as the seed does it):
  each block's first conv W ~ N(0, 2 / (C_out kh kw) / L) with L = number of blocks (8), the
  second conv and the head zero, block biases zero; stem and shortcut keep the PyTorch default.
* ``mfixup`` (ResNet only): as ``fixup`` but the second conv and the head W ~ N(0, 1e-12).

With ``batchnorm=False`` (the default) a model has only ``params``: ``model.apply(params, x)`` is a
pure function. With ``batchnorm=True`` the BatchNorm layers (PyTorch's momentum 0.1 and eps 1e-5)
keep running statistics in a ``batch_stats`` collection: train with
``model.apply(variables, x, train=True, mutable=["batch_stats"])``, evaluate with ``train=False``
(running averages, no mutation).
"""

import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from irmx.errors import ArgumentError

RESNET_INITS = ("pytorch", "nkaiming", "fixup", "mfixup")
CNN_INITS = ("pytorch", "nkaiming")

_zeros = nn.initializers.zeros


def torch_default_kernel_init():
    """PyTorch's default Conv2d/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    ``kaiming_uniform_(a=sqrt(5))`` has bound gain * sqrt(3 / fan_in) with gain^2 = 2 / (1 + 5),
    the same as a variance-scaling uniform of scale 1/3 (flax's limit sqrt(3 scale / fan_in)).
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default Conv2d/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _inits(scheme: str, role: str, fan_in: int, num_blocks: int = 1):
    """(kernel_init, bias_init) of a layer of ``role`` under the seed's init ``scheme``.

    Roles: "conv" (stem, mCNN layers), "block1"/"block2" (first/second conv of a BasicBlock),
    "shortcut" (1x1 projection) and "head" (the final Linear).
    """
    torch_default = (torch_default_kernel_init(), torch_default_bias_init(fan_in))
    if scheme == "pytorch":
        return torch_default
    if scheme == "nkaiming":
        gain2 = 1.0 if role == "head" else 2.0  # nonlinearity "linear" for the head, "relu" else
        return nn.initializers.variance_scaling(gain2, "fan_out", "normal"), _zeros
    if scheme in ("fixup", "mfixup"):
        if role == "block1":
            return nn.initializers.variance_scaling(2.0 / num_blocks, "fan_out", "normal"), _zeros
        if role in ("block2", "head"):
            if scheme == "fixup":
                return _zeros, _zeros
            return nn.initializers.normal(1e-6), _zeros
        return torch_default  # the seed's fixup loop leaves stem and shortcut untouched
    raise ValueError(f"unknown weight init {scheme!r}; allowed: {', '.join(RESNET_INITS)}")


def _conv(x, features: int, kernel: int, stride: int, *, scheme: str, role: str, use_bias: bool,
          name: str, num_blocks: int = 1):
    """A PyTorch-equivalent Conv2d: padding kernel // 2 on both sides (not XLA's "SAME", which
    pads (0, 1) for stride 2 on even sizes)."""
    fan_in = x.shape[-1] * kernel * kernel
    kernel_init, bias_init = _inits(scheme, role, fan_in, num_blocks)
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init, name=name,
    )(x)


def _batchnorm(train: bool, name: str):
    # PyTorch BatchNorm2d defaults: running = 0.9 running + 0.1 batch, eps 1e-5, gamma 1, beta 0.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _head(x, num_classes: int, scheme: str):
    kernel_init, bias_init = _inits(scheme, "head", x.shape[-1])
    return nn.Dense(num_classes, kernel_init=kernel_init, bias_init=bias_init, name="head")(x)


def _check_init(where: str, scheme: str, allowed: Sequence[str]):
    if scheme not in allowed:
        raise ArgumentError(where, "weight_init", scheme, "one of " + ", ".join(allowed))


def _check_width(where: str, argument: str, value: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(where, argument, value, "an integer >= 1")


class BasicBlock(nn.Module):
    """ResNet BasicBlock: relu(conv-[bn]-relu-conv-[bn](x) + shortcut(x)).

    The shortcut is the identity, or a bias-free strided 1x1 conv when the shape changes
    (torchvision's ``conv1x1``; the seed adds no BatchNorm to it).
    """

    planes: int
    stride: int = 1
    batchnorm: bool = False
    weight_init: str = "pytorch"
    num_blocks: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(scheme=self.weight_init, use_bias=not self.batchnorm, num_blocks=self.num_blocks)
        out = _conv(x, self.planes, 3, self.stride, role="block1", name="conv1", **kw)
        if self.batchnorm:
            out = _batchnorm(train, "bn1")(out)
        out = nn.relu(out)
        out = _conv(out, self.planes, 3, 1, role="block2", name="conv2", **kw)
        if self.batchnorm:
            out = _batchnorm(train, "bn2")(out)
        identity = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            identity = _conv(x, self.planes, 1, self.stride, scheme=self.weight_init,
                             role="shortcut", use_bias=False, name="shortcut")
        return nn.relu(out + identity)


class ResNet18K(nn.Module):
    """ResNet-18 of base width k (Nakkiran et al. 2020; the seed's ``resnet18_k``).

    Stem conv3x3(k, stride 1)-[bn]-relu; stages of widths (k, 2k, 4k, 8k) with ``stage_blocks``
    BasicBlocks each (2, 2, 2, 2 for ResNet-18; (3, 4, 6, 3) is the seed's ``resnet34``) and
    first-block strides (1, 2, 2, 2); global average pool; Dense(num_classes). k = 64 is the
    standard CIFAR ResNet-18 (11,168,266 parameters without BatchNorm for 10 classes).
    Parameters are named ``stem``, ``stage{s}_block{b}/{conv1,conv2,shortcut}`` and ``head``.
    """

    k: int
    num_classes: int = 10
    batchnorm: bool = False
    weight_init: str = "pytorch"
    stage_blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool = False):
        _check_width("ResNet18K", "k", self.k)
        _check_init("ResNet18K", self.weight_init, RESNET_INITS)
        x = _conv(x_BxHxWxC, self.k, 3, 1, scheme=self.weight_init, role="conv",
                  use_bias=not self.batchnorm, name="stem")
        if self.batchnorm:
            x = _batchnorm(train, "bn_stem")(x)
        x = nn.relu(x)
        num_blocks = sum(self.stage_blocks)
        for s, blocks in enumerate(self.stage_blocks):
            for b in range(blocks):
                x = BasicBlock(
                    self.k * 2**s, stride=2 if (s > 0 and b == 0) else 1,
                    batchnorm=self.batchnorm, weight_init=self.weight_init,
                    num_blocks=num_blocks, name=f"stage{s + 1}_block{b}",
                )(x, train)
        x = x.mean(axis=(1, 2))
        return _head(x, self.num_classes, self.weight_init)


class MCNN(nn.Module):
    """The seed's mCNN, "cnn5_k" (models/conv.py; after Nakkiran et al.'s 5-layer CNN).

    conv3x3(k)-[bn]-relu, conv3x3(2k)-[bn]-relu, avgpool 2, conv3x3(4k)-[bn]-relu, avgpool 2,
    conv3x3(8k)-[bn]-relu, global average pool, Dense(num_classes); all convs stride 1, padding 1.
    Layers are named ``conv1`` .. ``conv4`` and ``head``.
    """

    k: int
    num_classes: int = 10
    batchnorm: bool = False
    weight_init: str = "pytorch"

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool = False):
        _check_width("MCNN", "k", self.k)
        _check_init("MCNN", self.weight_init, CNN_INITS)
        x = x_BxHxWxC
        for i, mult in enumerate((1, 2, 4, 8)):
            x = _conv(x, self.k * mult, 3, 1, scheme=self.weight_init, role="conv",
                      use_bias=not self.batchnorm, name=f"conv{i + 1}")
            if self.batchnorm:
                x = _batchnorm(train, f"bn{i + 1}")(x)
            x = nn.relu(x)
            if i in (1, 2):
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # torch AvgPool2d(2): floor sizes
        x = x.mean(axis=(1, 2))
        return _head(x, self.num_classes, self.weight_init)


class MLPClassifier(nn.Module):
    """Flatten, then Dense-ReLU per width in ``hidden``, then Dense(num_classes).

    Same init schemes as the conv nets ("pytorch" default, or "nkaiming"). No BatchNorm.
    """

    hidden: Sequence[int] = (256, 256)
    num_classes: int = 10
    weight_init: str = "pytorch"

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool = False):
        del train  # no train/eval difference; accepted for a uniform call signature
        _check_init("MLPClassifier", self.weight_init, CNN_INITS)
        x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
        for i, width in enumerate(self.hidden):
            _check_width("MLPClassifier", "hidden", width)
            kernel_init, bias_init = _inits(self.weight_init, "conv", x.shape[-1])
            x = nn.relu(nn.Dense(width, kernel_init=kernel_init, bias_init=bias_init,
                                 name=f"dense{i + 1}")(x))
        return _head(x, self.num_classes, self.weight_init)


CLASSIFIER_PATTERNS = (
    "resnet18_<k> (k >= 1; resnet18 = resnet18_64)",
    "resnet34",
    "cnn5_<k> (k >= 1)",
    "mlp_<w>[x<w>...] (e.g. mlp_256x256)",
)

_RESNET = re.compile(r"resnet18_([0-9]+)")
_CNN = re.compile(r"cnn5_([0-9]+)")
_MLP = re.compile(r"mlp_([0-9]+(?:x[0-9]+)*)")


def is_classifier_name(name) -> bool:
    """Whether ``name`` has the shape of a classifier name (widths are checked later)."""
    return isinstance(name, str) and (
        name in ("resnet18", "resnet34")
        or any(p.fullmatch(name) for p in (_RESNET, _CNN, _MLP))
    )


def make_classifier(name: str, num_classes: int = 10, *, batchnorm: bool = False,
                    weight_init: str = "pytorch") -> nn.Module:
    """The classifier called ``name`` (the seed's model names), for ``num_classes`` outputs.

    "resnet18_16" -> ResNet18K(16); "resnet18" -> ResNet18K(64); "resnet34" -> ResNet18K(64,
    stage_blocks=(3, 4, 6, 3)); "cnn5_8" -> MCNN(8); "mlp_256x256" -> MLPClassifier((256, 256)).
    Invalid names, widths, inits and options raise ``ArgumentError`` (a ValueError) naming the
    argument.
    """
    where = "make_classifier"

    def bad_name():
        return ArgumentError(where, "name", name, "one of " + ", ".join(CLASSIFIER_PATTERNS))

    if not is_classifier_name(name):
        raise bad_name()
    _check_width(where, "num_classes", num_classes)
    if name.startswith("mlp_"):
        if batchnorm:
            raise ArgumentError(where, "batchnorm", batchnorm, f"False for {name!r}")
        widths = tuple(int(w) for w in _MLP.fullmatch(name).group(1).split("x"))
        if min(widths) < 1:
            raise bad_name()
        _check_init(where, weight_init, CNN_INITS)
        return MLPClassifier(widths, num_classes, weight_init=weight_init)
    if name.startswith("cnn5_"):
        k = int(_CNN.fullmatch(name).group(1))
        if k < 1:
            raise bad_name()
        _check_init(where, weight_init, CNN_INITS)
        return MCNN(k, num_classes, batchnorm=bool(batchnorm), weight_init=weight_init)
    _check_init(where, weight_init, RESNET_INITS)
    if name == "resnet34":
        return ResNet18K(64, num_classes, bool(batchnorm), weight_init, (3, 4, 6, 3))
    k = 64 if name == "resnet18" else int(_RESNET.fullmatch(name).group(1))
    if k < 1:
        raise bad_name()
    return ResNet18K(k, num_classes, bool(batchnorm), weight_init)
