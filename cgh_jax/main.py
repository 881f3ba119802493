"""Command-line entry point: ``python -m cgh_jax.main --config=configs/X.py[:args] --workdir=DIR``.

Also installed as the console script ``cgh-jax``. A config with a ``study`` field runs a
comparison study (``cgh_jax.study``); any other config trains one run
(``cgh_jax.train.train_and_evaluate``). Config fields can be overridden with
``--config.<field>=value``; the config is locked, so a mistyped field is an error.

Everything that can be checked without data is checked before JAX, TensorFlow or a model
is imported, each rule once (:mod:`cgh_jax.cli_checks`: the config file, its arguments, the
overrides, the work directory; :func:`cgh_jax.spec.experiment.parse`: every field, for each
run of a study); the trainer takes the checked config and, before any data is loaded,
checks the batch sizes against the device count and the dataset size (where the data
package knows it cheaply).

Errors are one line on stderr, ``cgh-jax: error: <what is wrong>; <what to do>``, with exit
status 2 for usage and configuration errors (the command line, the config, the data it
names, a workdir whose checkpoint has another config) and 1 for failures while running.
``CGH_JAX_TRACEBACK=1`` or ``--verbosity=1`` adds the traceback.

Multi-host: :func:`cgh_jax.distributed.initialize` connects the processes when JAX detects a
cluster of several (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes); elsewhere pass
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``. In a job of several
processes each process first meets the others and then trains in a child process that it
supervises (:mod:`cgh_jax.supervisor`): a bounded start-up (``--init_timeout``), mismatched
processes refused, a lost peer reported in one line (``--heartbeat_timeout``).
"""

import os
import re
import sys
import traceback
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from cgh_jax import cli_checks, study, supervisor
from cgh_jax.spec import experiment
from cgh_jax.spec.fields import ConfigError

FLAGS = flags.FLAGS

EXIT_CONFIG = 2  # the command line, the config or the data it names is wrong
EXIT_RUNTIME = 1  # a failure while running
TRACEBACK_ENV = "CGH_JAX_TRACEBACK"
_HELP_FLAGS = ("-h", "--help", "-help", "-?", "--helpshort", "-helpshort")

HELP = f"""\
usage: cgh-jax --config=FILE[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...]

Trains one run, or each run of a study config, and writes metrics, checkpoints and a report.

  --config=FILE[:ARGS]     experiment config file and its arguments (configs/default.py:epochs=5)
  --workdir=DIR            directory for checkpoints, metrics and reports (resumes what is in it)
  --config.FIELD=VALUE     override one config field, e.g. --config.optimizer.learning_rate=0.05
  --coordinator_address    multi-host: HOST:PORT of process 0 (with --num_processes, --process_id)
  --init_timeout=S         multi-host: seconds for all processes to join (default 60)
  --heartbeat_timeout=S    multi-host: seconds of silence before a process counts as lost (60)
  --verbosity=1            also print the traceback of an error (or set {TRACEBACK_ENV}=1)

Errors: one line 'cgh-jax: error: <what is wrong>; <what to do>' on stderr; exit status
{EXIT_CONFIG} for usage and configuration errors, {EXIT_RUNTIME} for failures while running.
Try --helpfull for every flag.
"""


# ----------------------------------------------------------------------------- errors


def _traceback_wanted(argv: Sequence[str] = ()) -> bool:
    if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        return True
    if FLAGS.is_parsed():
        return FLAGS.verbosity >= 1
    for i, arg in enumerate(argv):
        m = re.fullmatch(r"--?(?:verbosity|v)(?:=(-?\d+))?", arg)
        if m:
            value = m.group(1) or (argv[i + 1] if i + 1 < len(argv) else "0")
            return value.lstrip("-").isdigit() and int(value) >= 1
    return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, status: int, argv: Sequence[str] = ()) -> None:
    """Prints ``cgh-jax: error: <message>`` (and the traceback if asked) and exits."""
    if _traceback_wanted(argv) and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"cgh-jax: error: {_one_line(message)}", file=sys.stderr)
    supervisor.exit_process(status)


def _with_fix(error: BaseException, fix: str) -> str:
    text = _one_line(error).rstrip(".")
    return text if ";" in text else f"{text}; {fix}"


def _runtime_error_status(error: BaseException) -> tuple[int, str]:
    """The exit status and message of an error raised while preparing or running."""
    from cgh_jax import checkpointing  # Orbax: loaded by the trainer before most errors

    data = sys.modules.get("cgh_jax.data")
    data_errors = tuple(
        getattr(data, name)
        for name in ("DataError", "DatasetNotPreparedError")
        if hasattr(data, name)
    )
    if isinstance(error, ConfigError):
        return EXIT_CONFIG, str(error)
    if data_errors and isinstance(error, data_errors):
        return EXIT_CONFIG, _with_fix(error, "fix config.data")
    if isinstance(error, checkpointing.ConfigMismatchError):
        return EXIT_CONFIG, _with_fix(error, "use a new --workdir or the original config")
    if isinstance(error, checkpointing.CheckpointError):
        return EXIT_RUNTIME, _with_fix(error, "use a new --workdir")
    if isinstance(error, FloatingPointError):  # train.NonFiniteError
        return EXIT_RUNTIME, _with_fix(
            error, "lower the learning rate or resume from the last checkpoint"
        )
    if isinstance(error, OSError):
        return EXIT_RUNTIME, _with_fix(error, "check the path, its permissions and free space")
    if isinstance(error, ValueError):
        return EXIT_RUNTIME, _with_fix(error, "fix the config")
    return EXIT_RUNTIME, (
        f"{type(error).__name__}: {_one_line(error)}; rerun with {TRACEBACK_ENV}=1 for the "
        "traceback and report it"
    )


# ----------------------------------------------------------------------------- flags


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value of ``--name=V`` / ``--name V`` in ``argv`` (None if absent)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        m = re.fullmatch(rf"--?{name}(?:=(.*))?", arg, re.DOTALL)
        if m:
            value = (
                m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
            )
    return value


def _override_names(argv: Sequence[str]) -> list[str]:
    names = []
    for arg in argv:
        if arg == "--":
            break
        m = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if m:
            names.append(m.group(1))
    return names


def _flags_error(error: BaseException) -> ConfigError:
    """A ConfigError for an error from absl's flag parsing (overrides, unknown flags)."""
    text = _one_line(error)
    m = re.match(r"flag (--config\.[\w.]+)=(.*?): (.*)", text)
    if m:
        name, value, why = m.groups()
        kind = _field_type(name[len("--config.") :])
        return ConfigError(
            f"{name}={value} is not a valid {kind} value: {why.rstrip('.')}",
            f"give {name} a value of type {kind}",
        )
    text = re.sub(r"^ERROR:+\s*", "", text).rstrip(".")
    if isinstance(error, flags.CantOpenFlagFileError):
        return ConfigError(text, "pass an existing --flagfile")
    return ConfigError(text, "see cgh-jax --help")


def _field_type(field: str) -> str:
    value = FLAGS["config"].value if FLAGS["config"].present else None
    try:
        for part in field.split("."):
            value = value[part]
    except (KeyError, TypeError, AttributeError):
        return "value"
    return type(value).__name__ if value is not None else "value"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser for :func:`run`: checks everything light, exits on a mistake."""
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
        print(HELP, end="")
        sys.exit(0)
    try:
        try:
            argv = FLAGS.read_flags_from_files(argv, force_gnu=False)  # --flagfile=...
        except flags.Error as e:
            raise _flags_error(e) from e
        spec = _flag_value(argv[1:], "config")
        if spec is None:
            raise ConfigError("--config is required", "pass --config=configs/<name>.py[:ARGS]")
        if _flag_value(argv[1:], "workdir") is None:
            raise ConfigError(
                "--workdir is required", "pass --workdir=DIR for checkpoints and metrics"
            )
        own = cli_checks.load_config_file(spec)
        cli_checks.check_override_names(own, _override_names(argv[1:]))
        try:
            rest = FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
            raise _flags_error(e) from e
        if len(rest) > 1:
            raise ConfigError(
                f"unexpected argument(s) {' '.join(rest[1:])}",
                "pass flags only (--config=..., --workdir=..., --config.FIELD=VALUE)",
            )
        cli_checks.check_override_types(FLAGS.config, own)
        study.check_study_overrides(FLAGS.config, own, spec)
        _CHECKED["config"] = check_config(FLAGS.config)
        cli_checks.check_workdir(FLAGS.workdir)
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG, argv)
    return rest


_CHECKED: dict[str, object] = {}  # the checked config(s), from the flag parser to main


def check_config(config):
    """Every rule of the config, once per run: a :class:`RunConfig`, or for a study config
    its runs' (name -> RunConfig)."""
    if "study" in config or study.is_study(config):
        if not study.is_study(config):
            raise ConfigError(
                "config.study.optimizers is empty", "list the runs, e.g. ('sgd', 'm3')"
            )
        return study.parse_runs(study.config_runs(config), study.shared_config(config))
    return experiment.parse(config)


def define_flags() -> None:
    """Defines the command-line flags (once).

    Called by :func:`run`, not at import: ``config_flags`` reads ``sys.argv`` (and any
    ``--flagfile``) when its flag is defined, and an error there must reach the user as one
    line too.
    """
    if "workdir" in FLAGS:
        return
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file and its arguments, FILE[:ARGS].", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
    flags.DEFINE_integer(
        "init_timeout",
        None,
        "Multi-host: seconds for all processes to join (default: config.init_timeout_s).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "heartbeat_timeout",
        None,
        "Multi-host: seconds of silence before a process counts as lost (default: "
        "config.heartbeat_timeout_s).",
        lower_bound=1,
    )


# ----------------------------------------------------------------------------- running


def supervise_multiprocess() -> None:
    """In a job of several processes: meets the others, trains in a supervised child and
    exits with the job's status (:func:`cgh_jax.supervisor.launch`). Returns at once in a
    single process and in that child."""
    try:
        outcome = supervisor.launch(FLAGS, show_raw=_traceback_wanted())
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    if outcome is not None:
        status, message = outcome
        if message:
            fail(message, status)
        sys.exit(status)


def initialize_distributed() -> None:
    """Connects the processes of a multi-host job (before JAX touches any device)."""
    from cgh_jax import distributed

    init_s, heartbeat_s = supervisor.timeouts(FLAGS)
    try:
        distributed.initialize(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            init_timeout_s=init_s,
            # JAX's own detection is the backstop: the launchers notice a lost peer first.
            heartbeat_timeout_s=heartbeat_s + 30,
        )
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(
            str(e), "pass all of --coordinator_address, --num_processes and --process_id, or none"
        ) from e
    supervisor.note("initialized")


def main(argv):
    del argv  # _parse_flags refused anything but flags
    supervise_multiprocess()  # several processes: exits here, having trained in a child
    try:
        from cgh_jax import metrics as metrics_lib

        metrics_lib.quiet_library_logs()  # before JAX says which backends it did not find
        import jax

        initialize_distributed()
        logging.vlog(
            1,
            "Process %d/%d, %d local / %d global devices (%s).",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
            jax.devices()[0].device_kind,
        )
        checked = _CHECKED["config"]
        if isinstance(checked, experiment.RunConfig):
            from cgh_jax import train

            train.train_and_evaluate(checked, FLAGS.workdir)
        else:
            study.run_study(FLAGS.config, FLAGS.workdir, parsed=checked)
    except Exception as e:  # every failure becomes one line (traceback on request)
        status, message = _runtime_error_status(e)
        fail(message, status)


def run():
    """The ``cgh-jax`` console script."""
    try:
        define_flags()
    except flags.Error as e:
        fail(str(_flags_error(e)), EXIT_CONFIG, sys.argv)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
