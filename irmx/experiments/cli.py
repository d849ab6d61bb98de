"""What every ``launch/<family>.py`` main shares: --config, --workdir, --print_config."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from irmx.config_checks import ConfigError
from irmx.io.workdir import WorkdirError

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
    """--config (a config file[:variant], locked: a misspelt key is an error), --workdir,
    --print_config (print the resolved config and exit)."""
    config_flags.DEFINE_config_file(
        "config", default_config, "Config file[:variant]; override fields with --config.a.b=v.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (created; an existing one resumes).")
    flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
    flags.DEFINE_bool("progress", True, "Show a progress line while training.")


def parse_flags(argv):
    """absl flag parsing with one-line errors (a misspelt config key names the key)."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:
        _exit_with(e)


def _exit_with(e: Exception):
    """Print the one line that says what is wrong (not the config loader's traceback); exit 2."""
    text = str(e).strip().strip("'").replace("\\n", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    msg = lines[-1] if "Traceback" in text else " ".join(lines)
    if isinstance(e, (AttributeError, KeyError)):
        msg = "unknown config key " + msg.replace("\\'", "'")
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def run_main(run_fn, default_config: str) -> None:
    """Define the flags, then ``app.run`` ``make_main(run_fn)`` with one-line flag errors.

    ml_collections applies ``--config.a.b=v`` overrides while the flag is defined, so a misspelt
    key is caught here too.
    """
    try:
        define_flags(default_config)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:
        _exit_with(e)
    app.run(make_main(run_fn), flags_parser=parse_flags)


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache: a repeated command skips XLA compilation (most of a
    small run's time). ``IRMX_JAX_CACHE`` sets the folder; empty disables it."""
    import jax

    folder = os.environ.get("IRMX_JAX_CACHE", os.path.expanduser("~/.cache/irmx/jax"))
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def make_main(run_fn):
    """An absl main that validates flags, then calls ``run_fn(config, workdir, progress)``."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        enable_compilation_cache()
        config = FLAGS.config
        if FLAGS.print_config:
            print(config)
            return 0
        if not FLAGS.workdir:
            raise app.UsageError("--workdir is required (where the run's files go)")
        try:
            run_fn(config, os.path.expanduser(FLAGS.workdir), progress=FLAGS.progress)
        except (ConfigError, WorkdirError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    return main
