"""Config validation that runs before anything is compiled.

Each check raises ``ConfigError`` with one line naming the key, the value and what is allowed.
"""

import math


class ConfigError(ValueError):
    """An invalid config value: ``config.<key>=<value>: allowed <what>``."""


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def fail(key: str, value, allowed: str):
    raise ConfigError(f"config.{key}={value!r} is invalid; allowed: {allowed}")


def choice(config, key: str, allowed) -> None:
    value = _get(config, key)
    if value not in allowed:
        fail(key, value, "one of " + ", ".join(map(str, allowed)))


def number(config, key: str, low=-math.inf, high=math.inf, *, integer=False,
           low_open=False, high_open=False) -> None:
    """``low <= value <= high`` (open ends when asked); an int when ``integer``."""
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    ):
        fail(key, value, "an integer" if integer else "a number")
    bad = (
        not math.isfinite(value)
        or (value <= low if low_open else value < low)
        or (value >= high if high_open else value > high)
    )
    if bad or math.isnan(value):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        fail(key, value, f"{'an integer' if integer else 'a number'} in {lo}{low}, {high}{hi}")


def numbers(config, key: str, low=-math.inf, high=math.inf, *, low_open=False, min_len=0,
            integer=False) -> None:
    """A sequence of finite numbers (integers when ``integer``), each in range."""
    values = _get(config, key)
    kind = "integers" if integer else "numbers"
    if not isinstance(values, (list, tuple)) or len(values) < min_len:
        fail(key, values, f"a sequence of at least {min_len} {kind}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or (
            not math.isfinite(v)
        ) or (v <= low if low_open else v < low) or v > high:
            fail(key, values, f"finite {kind} in {'(' if low_open else '['}{low}, {high}]")


def multiple_of(config, key: str, divisor_key: str) -> None:
    value, divisor = _get(config, key), _get(config, divisor_key)
    if value % divisor:
        fail(key, value, f"a multiple of config.{divisor_key}={divisor}")


def learner_seeds(config) -> None:
    """The learner axis' seeds: an explicit ``seeds`` list, or ``seed`` + ``num_seeds``."""
    if config.get("seeds"):
        numbers(config, "seeds", 0, 2**32 - 1, min_len=1, integer=True)
    else:
        number(config, "seed", 0, 2**32 - 1, integer=True)
        number(config, "num_seeds", 1, 100_000, integer=True)
