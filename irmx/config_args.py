"""The string after the colon of ``--config=configs/<family>/<file>.py:<arg>``, parsed one way.

Every config file's ``get_config(arg)`` reads its argument with ``parse_arg`` (after big_vision's
``configs/common.py:parse_arg``): comma-joined parts, each a variant name or ``name=value``::

    def get_config(arg=None):
        a = parse_arg(arg or "irmv1", variants=("irmv1", "adareg", "smoke"), num_seeds=32)
        ...  # apply a.variants in order, use a.num_seeds

    parse_arg("adareg,smoke", variants=..., num_seeds=32)  # variants ('adareg', 'smoke'), 32
    parse_arg("smoke,num_seeds=4", ...)                    # variants ('smoke',), num_seeds 4
    parse_arg("smoek", ...)  # ValueError: unknown config variant 'smoek'; allowed: irmv1, ...

A misspelt part is an error that names it and lists what the file accepts, never a silent
default.
"""

import ml_collections


def autotype(text: str):
    """``text`` as the literal it spells: int, then float, then bool (true/false, any case),
    else the string itself (big_vision's rule: ``"4"`` -> 4, ``"1e-3"`` -> 0.001)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _typed(part: str, value, default):
    """``value`` checked against the type of ``default`` (an int is a fine float)."""
    if default is None or (isinstance(value, type(default))
                           and isinstance(value, bool) == isinstance(default, bool)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        return str(value)
    raise ValueError(f"config argument {part!r}: expected {type(default).__name__} "
                     f"(default {default!r})")


def parse_arg(arg: str | None, *, variants=(), combine: bool = True,
              **defaults) -> ml_collections.ConfigDict:
    """Parse ``arg`` (``None`` or ``""``: no parts) into its variants and named values.

    Args:
      arg: comma-joined parts; each is a variant name, ``name=value`` for a key of ``defaults``
        (value parsed by ``autotype`` and checked against the default's type), or a bare
        ``name`` of a bool default (= ``name=true``).
      variants: the variant names the file accepts.
      combine: False when the file takes at most one variant.
      **defaults: the named values the file accepts, with their defaults.

    Returns:
      A ConfigDict: ``variants`` (the variant names of ``arg``, in its order) and one field per
      key of ``defaults``.

    Raises:
      ValueError: an unknown variant or name (naming the part and listing what is allowed), a
        value of the wrong type, or several variants when ``combine`` is False.
    """
    if "variants" in defaults or set(variants) & set(defaults):
        raise TypeError("parse_arg: a named value may not be called 'variants' or like a variant")
    chosen, values = [], dict(defaults)
    for part in (arg or "").split(","):
        name, eq, text = (p.strip() for p in part.partition("="))
        if not name:
            continue
        if not eq and name in variants:
            chosen.append(name)
        elif name in defaults and (eq or isinstance(defaults[name], bool)):
            values[name] = _typed(part, autotype(text) if eq else True, defaults[name])
        else:
            where = f" in {arg!r}" if part != arg else ""
            raise ValueError(f"unknown config {'argument' if eq else 'variant'} {part!r}{where}; "
                             f"allowed: {_allowed(variants, defaults)}")
    if not combine and len(chosen) > 1:
        raise ValueError(f"config argument {arg!r} names {len(chosen)} variants; allowed: one of "
                         f"{', '.join(variants)}")
    out = ml_collections.ConfigDict({"variants": tuple(chosen)})
    out.update(values)
    return out


def _allowed(variants, defaults) -> str:
    """What a config file's argument accepts, for an error message."""
    parts = [", ".join(variants)] if variants else []
    if defaults:
        parts.append("name=value for " + ", ".join(f"{k} (default {v!r})"
                                                   for k, v in defaults.items()))
    return "; ".join(parts) or "no argument"


def learner_axis_fields(c: ml_collections.ConfigDict, names) -> None:
    """Add the learner-axis fields (``irmx.learners``) for the vmappable ``names`` to a config:
    ``vmapped.<name> = ()`` (a product factor when given values), ``zipped.<name>`` (value
    lists of one length walked together: one factor), ``sampled.num`` draws
    (``sampled.seed``: -1 = ``config.seed``) from ``sampled.<name> = (low, high[, "log"])``,
    and ``learners_per_group`` (vmap groups of that many learners, ``lax.map`` across; 0 = all).
    """
    c.vmapped = ml_collections.ConfigDict({n: () for n in names})
    c.zipped = ml_collections.ConfigDict({n: () for n in names})
    c.sampled = ml_collections.ConfigDict({"num": 0, "seed": -1, **{n: () for n in names}})
    c.learners_per_group = 0
