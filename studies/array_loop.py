r"""A minimal training loop over exported arrays, for accelerator hosts without TensorFlow.

Some runs of the suppression study do not fit the time budget of 2 CPU cores: winsorized SGD
sorts 100 per-example gradients per coordinate at every step (XLA's CPU sort is slow), and
convolutions train slowly on a CPU. Their data are exported on
the CPU machine through the project's own pipeline (``cgh_jax.data``: the same ids, label
corruption and evaluation subsets as the trainer) into ``arrays.npz``, with a ``plan.json``
listing the runs; this script trains the plan on any machine with JAX, Flax and optax (for
example a GPU host whose image has no TensorFlow), with the project's models
(``cgh_jax.models``), optimizers (``cgh_jax.optim.from_config``) and grouped / per-example
gradients, and writes each run's ``metrics.jsonl`` in the trainer's format, so the study's
tables and figures read them like any other run.

Differences from ``cgh_jax.train``: the epoch order is ``numpy.random.default_rng([seed,
epoch]).permutation`` of the training arrays (drop remainder) instead of the data layer's;
no checkpoints (a run is short; an interrupted run restarts); models without BatchNorm only.

Command (``cgh_jax`` importable: installed, or ``PYTHONPATH=.`` from the repository root)::

  python studies/array_loop.py PLAN.json [--only KEY,...] [--out-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cgh_jax import models
from cgh_jax.optim import from_config, grouped_grads, per_example_grads

RUN_MARKER = "study_run.json"  # the same marker as studies/common.py
EVAL_BATCH = 1000


def machine() -> str:
    devices = jax.devices()
    kind = devices[0].platform.upper()
    cores = os.cpu_count()
    if kind == "CPU":
        where = f"{cores} CPU cores ({platform.processor() or platform.machine()}), no accelerator"
    else:
        where = f"{len(devices)} x {devices[0].device_kind} + {cores} CPU cores"
    return f"{where}; Python {platform.python_version()}, jax {jax.__version__}"


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def eval_sets(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scored set name -> (images, labels), as the trainer scores them."""
    sets = {}
    for name in ("pristine", "corrupt", "train_sample", "test"):
        if f"{name}_image" not in arrays or not len(arrays[f"{name}_image"]):
            continue
        images = arrays[f"{name}_image"]
        if name == "corrupt":
            sets["corrupt_noisy"] = (images, arrays["corrupt_label"])
            sets["corrupt_true"] = (images, arrays["corrupt_true"])
        else:
            sets[name] = (images, arrays[f"{name}_label"])
    return sets


def train_run(run: dict, arrays: dict[str, np.ndarray], run_dir: Path) -> dict:
    """Trains one run of the plan; writes ``metrics.jsonl`` and the finished marker."""
    model_cfg = dict(run["model"])
    name = model_cfg.pop("name")
    model_cfg.pop("dtype", None)
    model_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()}
    num_classes = int(run["num_classes"])
    model = models.get_model(name, num_classes=num_classes, **model_cfg)
    opt_cfg = dict(run["optimizer"])
    mode = from_config.gradient_mode(opt_cfg)
    update_batch = from_config.examples_per_update(opt_cfg, int(run["batch_size"]))
    images, labels = arrays["train_image"], arrays["train_label"].astype(np.int32)
    steps_per_epoch = len(images) // update_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(images)} training examples, fewer than one update's {update_batch}."
        )
    epochs = int(run["num_epochs"])
    tx, _ = from_config.create_optimizer(
        opt_cfg, steps_per_epoch=steps_per_epoch, num_epochs=epochs
    )

    init_rng, dropout_rng, _ = jax.random.split(jax.random.PRNGKey(int(run["seed"])), 3)
    shape = images.shape[1:]
    variables = model.init(
        {"params": init_rng, "dropout": dropout_rng}, jnp.zeros((1, *shape)), train=False
    )
    if "batch_stats" in variables:
        raise ValueError(f"{name}: models with BatchNorm are not supported by this loop.")
    params = variables["params"]
    opt_state = tx.init(params)

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

    @jax.jit
    def step(params, opt_state, train_x, train_y, idx):
        batch = {"image": train_x[idx].astype(jnp.float32) / 255.0, "label": train_y[idx]}
        if mode == "batch":
            grads = jax.grad(loss_fn)(params, batch)
        elif mode == "grouped":
            grads = grouped_grads(loss_fn, int(opt_cfg["num_groups"]))(params, batch).grads
        else:
            grads = per_example_grads(loss_fn)(params, batch).grads
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def eval_batch(params, x, y):
        logits = model.apply({"params": params}, x.astype(jnp.float32) / 255.0, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(jnp.argmax(logits, -1) == y), jnp.sum(loss)

    sets = {
        k: (jnp.asarray(x), jnp.asarray(y.astype(np.int32)))
        for k, (x, y) in eval_sets(arrays).items()
    }
    train_x, train_y = jnp.asarray(images), jnp.asarray(labels)

    def evaluate(step_count: int, train_time: float) -> dict:
        record = {
            "step": step_count,
            "epoch": step_count // steps_per_epoch
            if step_count % steps_per_epoch == 0
            else round(step_count / steps_per_epoch, 4),
            "wall_time_s": round(train_time, 3),
        }
        for set_name, (x_all, y_all) in sets.items():
            hits = loss = 0.0
            for start in range(0, len(x_all), EVAL_BATCH):
                end = start + EVAL_BATCH
                h, s = eval_batch(params, x_all[start:end], y_all[start:end])
                hits, loss = hits + float(h), loss + float(s)
            record[f"{set_name}/top1"] = hits / len(x_all)
            record[f"{set_name}/loss"] = loss / len(x_all)
        return record

    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    train_time = 0.0
    records = [evaluate(0, 0.0)]
    step_count = 0
    for epoch in range(epochs):
        t0 = time.monotonic()
        order = np.random.default_rng([int(run["seed"]), epoch]).permutation(len(images))
        for b in range(steps_per_epoch):
            idx = jnp.asarray(order[b * update_batch : (b + 1) * update_batch])
            params, opt_state = step(params, opt_state, train_x, train_y, idx)
            step_count += 1
        jax.block_until_ready(params)
        train_time += time.monotonic() - t0
        records.append(evaluate(step_count, train_time))
        if not np.isfinite(records[-1].get("train_sample/loss", 0.0)):
            raise FloatingPointError(f"{run_dir}: non-finite loss after epoch {epoch + 1}.")
    with open(run_dir / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    info = {
        "wall_s": round(time.monotonic() - start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runner": "studies/array_loop.py",
        "machine": machine(),
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True))
    (run_dir / RUN_MARKER).write_text(json.dumps(info))
    return records[-1]


def _flatten(tree, prefix: str = "") -> dict:
    """Nested dicts -> ``{'a.b': value}`` (for comparing plan entries field by field)."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def run_plan(plan_path: Path, only: set[str] | None = None, out_root: Path | None = None) -> None:
    """Trains every unfinished run of ``plan_path`` (run dirs relative to the plan's dir)."""
    plan = json.loads(plan_path.read_text())
    root = plan_path.parent
    arrays = load_arrays(root / plan["arrays"])
    for run in plan["runs"]:
        if only and run["key"] not in only:
            continue
        run_dir = (out_root or root) / run["dir"]
        if (run_dir / RUN_MARKER).exists():
            done = _flatten(json.loads((run_dir / "run.json").read_text()))
            now = _flatten(json.loads(json.dumps(run)))
            differ = sorted(k for k in done.keys() & now.keys() if done[k] != now[k])
            if differ:
                raise ValueError(
                    f"{run_dir} holds a finished run of another plan entry (fields {differ}); "
                    "delete it to retrain, or restore the plan it was trained with."
                )
            added = sorted(now.keys() - done.keys())
            note = f"; fields added to the plan since: {added}" if added else ""
            print(f"{run_dir}: finished earlier{note}", flush=True)
            continue
        t0 = time.monotonic()
        final = train_run(run, arrays, run_dir)
        print(
            f"{run['dir']}: {time.monotonic() - t0:.1f}s, "
            + ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k.endswith("/top1")),
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="plan.json written by studies/suppression.py --prepare")
    parser.add_argument("--only", default="", help="comma-separated run keys to train")
    parser.add_argument(
        "--out-root", default=None, help="write run dirs here instead of beside the plan"
    )
    args = parser.parse_args(argv)
    only = {k for k in args.only.split(",") if k} or None
    print(machine(), flush=True)
    run_plan(Path(args.plan), only, Path(args.out_root) if args.out_root else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
