"""Command-line entry point: ``python -m cgh_jax.main --config=configs/X.py[:args] --workdir=DIR``.

Also installed as the console script ``cgh-jax``. A config with a ``study`` field runs a
comparison study (``cgh_jax.study``); any other config trains one run
(``cgh_jax.train.train_and_evaluate``). Config fields can be overridden with
``--config.<field>=value``; the config is locked, so a mistyped field is an error.

Multi-host: on Cloud TPU VMs ``jax.distributed.initialize()`` is called automatically; on
other clusters pass ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
"""

import glob
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cgh_jax import checkpointing, study, train
from cgh_jax import metrics as metrics_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])

_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")


def _on_cloud_tpu() -> bool:
    return any(k in os.environ for k in _TPU_ENV) or bool(glob.glob("/dev/accel*"))


def initialize_distributed() -> None:
    """Connects the processes of a multi-host job (before JAX touches any device)."""
    explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if any(v is not None for v in explicit):
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif _on_cloud_tpu():
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf  # The input pipeline's; keep it off the accelerators.

    tf.config.set_visible_devices([], "GPU")
    metrics_lib.quiet_library_logs()
    initialize_distributed()
    logging.info(
        "Process %d/%d, %d local / %d global devices (%s).",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    try:
        if study.is_study(FLAGS.config):
            study.run_study(FLAGS.config, FLAGS.workdir)
        else:
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, checkpointing.CheckpointError, train.NonFiniteError) as e:
        print(f"cgh-jax: error: {e}", file=sys.stderr)
        sys.exit(1)


def run():
    """The ``cgh-jax`` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
