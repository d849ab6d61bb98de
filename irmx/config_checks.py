"""Config validation that runs before anything is compiled.

Each check raises ``ConfigError`` with one line naming the key, the value and what is allowed.
The library below ``irmx.experiments`` names its own arguments instead (``ArgumentError``); a
driver that lets a library function check a config value maps the argument to its key::

    with config_keys(name="model.name", batchnorm="model.batchnorm"):
        make_classifier(config.model.name, 10, batchnorm=config.model.batchnorm)
"""

import collections
import contextlib
import math

from irmx.errors import ArgumentError, UserError


class ConfigError(UserError, ValueError):
    """An invalid config value: ``config.<key>=<value>: allowed <what>``."""


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def fail(key: str, value, allowed: str):
    raise ConfigError(f"config.{key}={value!r} is invalid; allowed: {allowed}")


@contextlib.contextmanager
def config_keys(**keys: str):
    """Within the block, a library ``ArgumentError`` whose path starts with argument ``a`` of
    ``keys`` becomes the ``ConfigError`` of config key ``keys[a]`` (the rest of the path
    appended: ``specs="evals"`` turns ``specs.val.split`` into ``config.evals.val.split``).
    Errors about other arguments pass unchanged."""
    try:
        yield
    except ArgumentError as e:
        head, dot, rest = e.path.partition(".")
        if head not in keys:
            raise
        key = keys[head] + dot + rest
        raise ConfigError(f"config.{key}={e.value!r} is invalid; allowed: {e.allowed}") from None


def _bound(x) -> str:
    """A range end as a person writes it: 0 and 1000000 rather than 0.0 and 1000000.0."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _range(kind: str, low, high, low_open: bool, high_open: bool) -> str:
    """``kind`` (finite values only) between ``low`` and ``high``, without spelling an infinite
    end as if it were allowed: "a finite number > 0", "an integer in [1, 100]"."""
    if math.isinf(low) and math.isinf(high):
        return kind
    if math.isinf(high):
        return f"{kind} {'>' if low_open else '>='} {_bound(low)}"
    if math.isinf(low):
        return f"{kind} {'<' if high_open else '<='} {_bound(high)}"
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    return f"{kind} in {lo}{_bound(low)}, {_bound(high)}{hi}"


def _in_range(v, low, high, low_open: bool, high_open: bool) -> bool:
    return math.isfinite(v) and (v > low if low_open else v >= low) and (
        v < high if high_open else v <= high)


def choice(config, key: str, allowed) -> None:
    value = _get(config, key)
    if value not in allowed:
        fail(key, value, "one of " + ", ".join(map(str, allowed)))


def number(config, key: str, low=-math.inf, high=math.inf, *, integer=False,
           low_open=False, high_open=False) -> None:
    """A finite ``low <= value <= high`` (open ends when asked); an int when ``integer``."""
    value = _get(config, key)
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or (
        not _in_range(value, low, high, low_open, high_open)
    ):
        fail(key, value, _range(kind, low, high, low_open, high_open))


def numbers(config, key: str, low=-math.inf, high=math.inf, *, low_open=False, min_len=0,
            integer=False) -> None:
    """A sequence of finite numbers (integers when ``integer``), each in range."""
    values = _get(config, key)
    kind = "integers" if integer else "finite numbers"
    if not isinstance(values, (list, tuple)) or len(values) < min_len:
        fail(key, values, f"a sequence of at least {min_len} {kind}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or (
            not _in_range(v, low, high, low_open, False)
        ):
            fail(key, values, _range(kind, low, high, low_open, False))


def multiple_of(config, key: str, divisor_key: str) -> None:
    value, divisor = _get(config, key), _get(config, divisor_key)
    if value % divisor:
        fail(key, value, f"a multiple of config.{divisor_key}={divisor}")


def learner_seeds(config) -> None:
    """The learner axis' seeds: an explicit ``seeds`` list, or ``seed`` + ``num_seeds``."""
    if config.get("seeds"):
        numbers(config, "seeds", 0, 2**32 - 1, min_len=1, integer=True)
        twice = sorted(s for s, n in collections.Counter(config.seeds).items() if n > 1)
        if twice:
            fail("seeds", config.seeds, "distinct seeds (repeated: "
                 f"{', '.join(map(str, twice))}; one learner each)")
    else:
        number(config, "seed", 0, 2**32 - 1, integer=True)
        number(config, "num_seeds", 1, 100_000, integer=True)


def learner_axis(config, ranges) -> None:
    """The learner axis beyond the seeds (``irmx.learners``): ``vmapped.<name>`` value lists,
    ``zipped.<name>`` lists of one length,
    ``sampled.num`` draws from ``sampled.<name> = (low, high[, "log" | "linear" | "int"])``
    and ``learners_per_group``. ``ranges``: vmappable name -> (low, high, low_open); a name
    may be vmapped or sampled, not both; values distinct (one learner each)."""
    learner_seeds(config)
    vmapped = config.get("vmapped", {}) or {}
    for name, values in vmapped.items():
        if name not in ranges:
            fail(f"vmapped.{name}", values, "a name among " + ", ".join(ranges))
        if values:
            low, high, low_open = ranges[name]
            numbers(config, f"vmapped.{name}", low, high, low_open=low_open)
            if len(set(values)) != len(values):
                fail(f"vmapped.{name}", tuple(values), "distinct values (one learner each)")
    zipped = {n: v for n, v in (config.get("zipped", {}) or {}).items() if v}
    for name, values in zipped.items():
        key = f"zipped.{name}"
        if name not in ranges:
            fail(key, values, "a name among " + ", ".join(ranges))
        if vmapped.get(name):
            fail(key, tuple(values), f"() while config.vmapped.{name} is set")
        low, high, low_open = ranges[name]
        numbers(config, key, low, high, low_open=low_open)
    lengths = {n: len(v) for n, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        name = sorted(zipped)[-1]
        fail(f"zipped.{name}", tuple(zipped[name]),
             f"value lists of one length for every zipped name (lengths: {lengths})")
    sampled = config.get("sampled", None)
    if sampled is not None:
        number(config, "sampled.num", 0, 1_000_000, integer=True)
        number(config, "sampled.seed", -1, 2**32 - 1, integer=True)
        for name, spec in sampled.items():
            if name in ("num", "seed") or not spec:
                continue
            key = f"sampled.{name}"
            if name not in ranges:
                fail(key, spec, "a name among " + ", ".join(ranges))
            if vmapped.get(name) or zipped.get(name):
                fail(key, spec, f"() while config.vmapped.{name} or config.zipped.{name} is "
                     "set (one factor per name)")
            low, high, low_open = ranges[name]
            scale = spec[2] if len(spec) == 3 else "linear"
            ok = (isinstance(spec, (list, tuple)) and len(spec) in (2, 3)
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          and math.isfinite(v) for v in spec[:2])
                  and scale in ("linear", "log", "int"))
            ok = ok and (low < spec[0] if low_open else low <= spec[0]) and spec[0] < spec[1]
            ok = ok and spec[1] <= high and (scale != "log" or spec[0] > 0)
            if not ok:
                lo = "(" if low_open else "["
                fail(key, tuple(spec), f"(low, high[, 'log' | 'linear' | 'int']) with "
                     f"low < high in {lo}{low}, {high}] (log: low > 0)")
    number(config, "learners_per_group", 0, 1_000_000, integer=True)
