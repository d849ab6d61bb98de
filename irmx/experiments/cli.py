"""What every ``launch/<family>.py`` main shares: --config, --workdir, --print_config.

Anything the user can fix (``irmx.errors.UserError``: a bad config value, a missing config file,
an unknown key, an unusable workdir, a data set that is not prepared) ends the command with one
line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

import ast
import difflib
import importlib.util
import os
import re
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

import irmx
from irmx.errors import UserError
from irmx.io import workdir as wd

FLAGS = flags.FLAGS


def config_file(name: str) -> str:
    """Path of ``configs/<name>`` as irmx ships it (``irmx/configs``: in a checkout, a link to
    the repository's ``configs/``), for a main's default ``--config``."""
    return os.path.join(os.path.dirname(os.path.abspath(irmx.__file__)), "configs", name)


class _NonFinite(ast.NodeTransformer):
    """Bare ``nan`` and ``inf`` in a literal as the floats they name."""

    def visit_Name(self, node):
        return ast.Constant(float(node.id)) if node.id in ("nan", "inf") else node


class _TupleParser(tuple_parser.TupleParser):
    """ml_collections' tuple override parser, reading ``nan`` and ``inf`` as floats: otherwise
    ``--config.x='(0.2,nan)'`` becomes the 1-tuple of that string and is echoed mangled."""

    def parse(self, argument):
        if isinstance(argument, str) and re.search(r"\b(nan|inf)\b", argument):
            try:
                value = ast.literal_eval(_NonFinite().visit(ast.parse(argument, mode="eval")))
            except (SyntaxError, ValueError):
                return super().parse(argument)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return super().parse(argument)


def define_flags(default_config: str) -> None:
    """--config (a config file[:variant], locked: a misspelt key is an error), --workdir,
    --print_config (print the resolved config and exit)."""
    config_flags.register_flag_parser_for_type(tuple, _TupleParser())
    config_flags.DEFINE_config_file(
        "config", default_config, "Config file[:variant]; override fields with --config.a.b=v.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (created; an existing one resumes).")
    flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
    flags.DEFINE_bool("progress", True, "Show a progress line while training.")


# ---------------------------------------------------------------------------------------------
# The command line checked before absl and ml_collections see it (their errors are tracebacks
# or lose the key's path)


def config_argument(argv, default_config: str) -> str:
    """The value of ``--config`` in ``argv`` (``--config=F``, ``--config F``), else the default."""
    for i, arg in enumerate(argv[1:], 1):
        if re.match(r"^--?config=", arg):
            return arg.split("=", 1)[1]
        if re.match(r"^--?config$", arg) and i + 1 < len(argv):
            return argv[i + 1]
    return default_config


def override_keys(argv) -> list[str]:
    """The dotted keys of ``--config.a.b=v`` (and ``--noconfig.a.b``) flags in ``argv``."""
    return [arg.split("=", 1)[0].split(".", 1)[1] for arg in argv[1:]
            if re.match(r"^--?(no)?config\.", arg)]


def resolve_config_path(spec: str) -> str:
    """``spec`` (``path[:arg]``) with a path that does not exist here resolved against the
    installed package's configs (``configs/irm/regression.py`` -> ``<irmx>/configs/irm/...``),
    so the console scripts find a config variant outside the repository."""
    path, colon, arg = spec.partition(":")
    if os.path.isfile(path):
        return spec
    rel = os.path.normpath(path)
    rel = rel[len("configs" + os.sep):] if rel.startswith("configs" + os.sep) else rel
    installed = config_file(rel)
    return installed + colon + arg if os.path.isfile(installed) else spec


def resolve_config_argument(argv) -> list:
    """``argv`` with its ``--config`` value resolved by ``resolve_config_path``."""
    out = list(argv)
    for i, arg in enumerate(out[1:], 1):
        if re.match(r"^--?config=", arg):
            flag, value = arg.split("=", 1)
            out[i] = f"{flag}={resolve_config_path(value)}"
        elif re.match(r"^--?config$", arg) and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


def config_variants(module) -> list[str]:
    """The variant names a config module's ``get_config`` accepts (its ``VARIANTS``, else the
    list its ``parse_arg`` error gives for an unknown one)."""
    if hasattr(module, "VARIANTS"):
        return list(module.VARIANTS)
    try:
        module.get_config("-")
    except ValueError as e:
        found = re.search(r"allowed: (.*)$", str(e))
        if found:
            return [v.strip() for v in found.group(1).split(",") if v.strip()]
    return []


HELP_FLAGS = ("--help", "-help", "-h", "--h", "-?")


def usage(argv, default_config: str, doc: str = "") -> str:
    """The text of ``--help``: the command's line, what it does (the main's docstring), its
    flags, and the config file's docstring (its commands and expected results) and variants."""
    prog = os.path.basename(argv[0])
    spec = config_argument(argv, default_config)
    path = resolve_config_path(spec).partition(":")[0]
    lines = [f"usage: {prog} --config=FILE[:VARIANT,...] --workdir=DIR [--config.KEY=VALUE ...]",
             ""]
    if doc:
        lines += [doc.strip(), ""]
    lines += [
        "flags:",
        f"  --config=FILE[:VARIANT,...]  the config file and its variants (default: {spec});",
        "                               override any field with --config.a.b=value",
        "  --workdir=DIR                the run's folder (created; an existing one resumes)",
        "  --print_config               print the resolved config and exit",
        "  --[no]progress               the progress line while it runs (default: on)",
        "  --helpfull                   every flag, absl's and the libraries' too",
    ]
    if os.path.isfile(path):
        module_spec = importlib.util.spec_from_file_location("irmx_cli_help", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        lines += ["", f"config file {path}:"]
        if module.__doc__:
            lines += ["  " + line if line else "" for line in module.__doc__.strip().splitlines()]
        variants = config_variants(module)
        if variants:
            lines += ["", "variants: " + ", ".join(variants)]
    return "\n".join(lines)


def load_config(spec: str):
    """``get_config(arg)`` of the config file of ``spec`` = ``path[:arg]``; ``UserError`` for a
    missing file or a ``ValueError`` of ``get_config`` (an unknown variant)."""
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        there = sorted(n for n in os.listdir(folder) if n.endswith(".py")
                       and not n.startswith("_")) if os.path.isdir(folder) else []
        hint = f"; config files in {folder}: {', '.join(there)}" if there else ""
        raise UserError(f"config file {path} not found (--config={spec}){hint}")
    module_spec = importlib.util.spec_from_file_location("irmx_cli_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(*([arg] if colon else []))
    except ValueError as e:
        raise UserError(f"--config={spec}: {e}") from None


def unknown_key(config, key: str) -> str | None:
    """Why ``--config.<key>`` names no field of ``config`` (None when it does): the level where
    the path leaves the config and the keys allowed there."""
    node, path = config, "config"
    for part in key.split("."):
        if "[" in part or node is None:  # an indexed element or an unset section: ml_collections'
            return None
        if not isinstance(node, ml_collections.ConfigDict):
            return (f"unknown config key config.{key}: {path} is a {type(node).__name__}, "
                    "not a section with keys")
        if part not in node:
            keys = list(node.keys())
            close = difflib.get_close_matches(part, keys, n=1)
            guess = f" (did you mean {path}.{close[0]}?)" if close else ""
            return (f"unknown config key config.{key}{guess}; keys allowed in {path}: "
                    f"{', '.join(keys)}")
        node, path = node[part], f"{path}.{part}"
    return None


def check_command_line(argv, default_config: str) -> None:
    """``UserError`` for a missing config file, an unknown variant or an unknown override key."""
    argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
    keys = override_keys(argv)
    config = load_config(config_argument(argv, default_config))
    for key in keys:
        why = unknown_key(config, key)
        if why:
            raise UserError(why)


def _exit_with(e: Exception):
    """Print the one line that says what is wrong (not the config loader's traceback); exit 2."""
    text = str(e).strip().replace("\\n", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    msg = lines[-1] if "Traceback" in text else " ".join(lines)
    if isinstance(e, (AttributeError, KeyError)):
        msg = "unknown config key " + msg.strip("'\"").replace("\\'", "'")
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl flag parsing with one-line errors (a misspelt config key names the key)."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:
        _exit_with(e)


def run_main(run_fn, default_config: str, doc: str = "", unused_keys=None) -> None:
    """Check the command line, define the flags, then ``app.run`` ``make_main(run_fn)`` with
    one-line flag errors. ``--help`` prints ``usage`` (``doc``: the main's docstring).

    ml_collections applies ``--config.a.b=v`` overrides while the flag is defined, so a misspelt
    key that ``check_command_line`` let through is caught here too.
    """
    sys.argv = resolve_config_argument(sys.argv)
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print_to_pipe(usage(sys.argv, default_config, doc))
        sys.exit(0)
    try:
        check_command_line(sys.argv, default_config)
    except UserError as e:
        _exit_with(e)
    try:
        define_flags(default_config)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:
        _exit_with(e)
    app.run(make_main(run_fn, unused_keys), flags_parser=parse_flags)


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache: a repeated command skips XLA compilation (most of a
    small run's time). ``IRMX_JAX_CACHE`` sets the folder; empty disables it."""
    import jax

    folder = os.environ.get("IRMX_JAX_CACHE", os.path.expanduser("~/.cache/irmx/jax"))
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def where_outputs_are(workdir: str) -> str:
    """The closing lines of a run: its workdir, its figures and the TensorBoard command."""
    root = os.path.abspath(workdir)
    figures = sorted(os.path.relpath(os.path.join(d, f), root)
                     for d, _, files in os.walk(root) for f in files
                     if f.endswith(".png") and os.path.basename(d) == "plots")
    lines = [f"outputs: {root} (summary.json, metrics.jsonl, status.json, config.json)"]
    if figures:
        shown = ", ".join(figures[:6]) + (f", ... ({len(figures)} in all)"
                                          if len(figures) > 6 else "")
        lines.append(f"figures: {shown}")
    if any("tb" in dirs for _, dirs, _ in os.walk(root)):
        lines.append(f"tensorboard --logdir {root}")
    return "\n".join(lines)


def print_to_pipe(text: str) -> None:
    """Print ``text``; a reader that closed the pipe early (``--help | head``) has seen
    enough, which is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def format_config(config, unused: dict | None = None) -> str:
    """The resolved config as ml_collections prints it; keys in ``unused`` (key -> why) are
    listed after it as not used by this config."""
    text = str(config).rstrip()
    if unused:
        text += "\n# not used by this config:\n" + "\n".join(
            f"#   {key}  ({why})" for key, why in unused.items())
    return text


def make_main(run_fn, unused_keys=None):
    """An absl main that validates flags, then calls ``run_fn(config, workdir, progress)``;
    returns 2 after one ``error:`` line for anything the user can fix. ``unused_keys(config)
    -> {key: why}`` marks what ``--print_config`` shows but the config does not use."""

    def main(argv):
        try:
            if len(argv) > 1:
                raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
            if not FLAGS["verbosity"].present:
                logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
            enable_compilation_cache()
            config = FLAGS.config
            if FLAGS.print_config:
                unused = unused_keys(config) if unused_keys else None
                print_to_pipe(format_config(config, unused))
                return 0
            if not FLAGS.workdir:
                raise UserError("--workdir is required (the folder for the run's files)")
            workdir = os.path.expanduser(FLAGS.workdir)
            wd.check_workdir(workdir)
            run_fn(config, workdir, progress=FLAGS.progress)
            print(where_outputs_are(workdir))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # the runner has recorded status "interrupted"
            print(f"\ninterrupted; re-run the same command to resume ({FLAGS.workdir})",
                  file=sys.stderr)
            return 130
        return 0

    return main
