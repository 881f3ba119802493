"""The GPU benchmark script runs end to end and needs nothing the GPU image lacks.

``benchmarks/gpu.sh`` is only run on a lent accelerator, so its ``--smoke`` mode (a tiny
ResNet, 2 steps) runs here on the CPU in a fresh process: it must time every optimizer,
measure the input pipeline and write its table without importing TensorFlow, TFDS, CLU or
Orbax (the accelerator image has JAX, flax, optax and numpy; ``gpu.sh`` brings the small
pure-Python ml_collections, which the optimizer spec's config defaults use, as a wheel from
``CGH_WHEELS``). The table
of trainer runs that ``gpu.sh`` appends comes from ``benchmarks/train_rates.py``, which reads
the runs' logs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RUN = """
import sys

import pytest
sys.path.insert(0, "benchmarks")
import gpu
assert gpu.main(["--smoke", "--output", sys.argv[1]]) == 0
heavy = {"tensorflow", "tensorflow_datasets", "clu", "orbax"}
loaded = sorted(heavy & {name.split(".")[0] for name in sys.modules})
assert not loaded, f"benchmarks/gpu.py imported {loaded}"
"""


def test_gpu_benchmark_smoke_writes_a_table_for_every_optimizer(tmp_path):
    output = tmp_path / "nested" / "gpu_results.md"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _RUN, str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = output.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| resnet_tiny |")]
    assert [row.split("|")[2].strip() for row in rows] == ["sgd", "m3", "rm3", "ra3", "m3_loop"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[4]) > 0  # images/s
        assert cells[2] == ("3x4" if cells[1].startswith("m3") else "12")
    assert rows[0].split("|")[6].strip() == "1.000"  # SGD against itself
    pipeline = [line for line in table.splitlines() if "JPEG" in line]
    assert pipeline and all(float(line.split("|")[3]) > 0 for line in pipeline)


_STUDY_LOG = """\
I1129 19:00:00.000000 1 study.py:123] Study run 1/2: sgd -> /w/default/sgd
I1129 19:00:01.000000 1 train.py:347] Training mlp with sgd: 400 steps (40 per epoch, 100 \
examples per update) on 1 devices in 1 processes.
I1129 19:00:02.000000 1 train.py:393] step 200/400 (epoch 5.00) 50.00 steps/s, ETA 0:04: \
loss=1, top1=0.5
I1129 19:00:03.000000 1 train.py:393] step 400/400 (epoch 10.00) 300.00 steps/s, ETA 0:00: \
loss=1, top1=0.5
I1129 19:00:04.000000 1 study.py:129] Run sgd finished in 12.5 s.
I1129 19:00:05.000000 1 study.py:123] Study run 2/2: m3 -> /w/default/m3
I1129 19:00:05.000000 1 train.py:239] M3 layout vmap (auto: one device; grouped path).
I1129 19:00:06.000000 1 train.py:347] Training mlp with m3: 130 steps (13 per epoch, 300 \
examples per update) on 1 devices in 1 processes.
I1129 19:00:07.000000 1 train.py:393] step 100/130 (epoch 7.69) 20.00 steps/s, ETA 0:01: \
loss=1, top1=0.5
"""


def test_train_rates_reads_steps_per_second_of_each_run_from_the_logs(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_rates

    runs = train_rates.parse_log("default", _STUDY_LOG)
    assert [(r.name, r.optimizer, r.examples_per_update) for r in runs] == [
        ("sgd", "sgd", 100),
        ("m3", "m3", 300),
    ]
    assert runs[0].steps_per_s == (300.0, False)  # the first report includes compilation
    assert runs[1].steps_per_s == (20.0, True)  # the only report
    assert (runs[0].last_step, runs[0].total_steps, runs[0].wall_s) == (400, 400, 12.5)
    single = _STUDY_LOG.split("I1129 19:00:05.000000 1 study.py:123]")[0].split("\n", 1)[1]
    (run,) = train_rates.parse_log("cifar10", single)
    assert (run.job, run.name, run.model) == ("cifar10", "cifar10", "mlp")

    log = tmp_path / "default.log"
    log.write_text(_STUDY_LOG)
    output = tmp_path / "table.md"
    argv = [f"default={log}", f"cifar10={tmp_path / 'none.log'}", "--output", str(output)]
    assert train_rates.main(argv) == 0
    rows = [line for line in output.read_text().splitlines() if line.startswith("| default")]
    assert [row.split("|")[7].strip() for row in rows] == ["300.0", "20.0*"]
    assert [row.split("|")[8].strip() for row in rows] == ["30000", "6000"]
    assert "| cifar10 | - |" in output.read_text()


def test_vs_pytorch_smoke_times_every_row(tmp_path):
    """``benchmarks/vs_pytorch.py --smoke``: tiny models, every row, both JAX columns; the
    PyTorch column when torch is importable, else a line saying it is skipped."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "benchmarks/vs_pytorch.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    table = out.split("## Examples per second")[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip().split(",")[0] for r in rows] == ["MLP 784-2048-10"] + ["MLP"] * 3 + [
        "ResNet-18 (CIFAR stem)"
    ] + ["ResNet-18"] * 2
    has_torch = importlib.util.find_spec("torch") is not None
    assert ("PyTorch is not installed" in out) != has_torch
    for cells in rows:
        cells = [c.strip() for c in cells]
        assert float(cells[2].replace(",", "")) > 0  # trainer step, examples/s
        mlp = cells[0].startswith("MLP")
        assert (cells[3] != "-") == mlp  # minimal step on the MLP rows
        assert (cells[4] != "-") == has_torch
        assert cells[-1] == "1/1"
    assert "load average" in out


_TORCH_PATHS = """
import json, sys

import numpy as np
import torch

from benchmarks import torch_reference

grads = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
counts = [
    sum(p.numel() for p in torch_reference.MLP(784, (2048,), 10).parameters()),
    sum(p.numel() for p in torch_reference.ResNet18(10, width=64).parameters()),
]
paths = {}
for name in ("m3", "rm3", "ra3"):
    p = torch.nn.Parameter(torch.zeros(5))
    opt = torch_reference.make_optimizer(name, [p], lr=0.1)
    paths[name] = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        paths[name].append(p.detach().numpy().tolist())
print(json.dumps({"counts": counts, "paths": paths}))
"""


def test_torch_reference_matches_cgh_jax_optimizers():
    """The PyTorch optimizers of the side-by-side follow the same update rules as cgh-jax's
    (one float32 gradient sequence through both), and the models have the published
    parameter counts. Needs the optional torch (the ``bench`` extra); PyTorch runs in its
    own process, as in the benchmark (it crashes beside TensorFlow in one process)."""
    import json

    import numpy as np
    import optax

    import cgh_jax

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the optional bench extra)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_PATHS], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.splitlines()[-1])
    assert got["counts"] == [1628170, 11173962]

    grads = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    lr = 0.1
    for name in ("m3", "rm3", "ra3"):
        params = np.zeros(5, np.float32)
        if name == "m3":  # one update per three gradients, at the same parameters
            tx = cgh_jax.m3_sgd(lr)
            state, jax_path = tx.init(params), []
            for i in range(0, 9, 3):
                updates, state = tx.update(grads[i : i + 3], state, params)
                params = np.asarray(optax.apply_updates(params, updates))
                jax_path += [jax_path[-1] if jax_path else np.zeros(5, np.float32)] * 2 + [params]
        else:
            tx = {"rm3": cgh_jax.rm3_sgd, "ra3": cgh_jax.ra3_sgd}[name](lr)
            state, jax_path = tx.init(params), []
            for g in grads:
                updates, state = tx.update(g, state, params)
                params = np.asarray(optax.apply_updates(params, updates))
                jax_path.append(params)
        torch_path = np.array(got["paths"][name], np.float32)
        np.testing.assert_allclose(torch_path, np.array(jax_path), rtol=1e-6, atol=1e-6)


def test_step_time_conv_section_splits_the_step_into_its_parts(capsys):
    """``benchmarks/step_time.py --sections conv --smoke``: the forward pass, then the input
    gradients, then the weight gradients, each row's added time the difference from the
    row before."""
    from benchmarks import step_time

    assert step_time.main(["--sections", "conv", "--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == ["forward", "+ input grads", "+ weight grads"]
    walls = [float(r[1]) for r in rows]
    added = [float(r[2]) for r in rows]
    assert added[0] == walls[0]
    assert all(abs(added[i] - (walls[i] - walls[i - 1])) <= 1 for i in (1, 2))  # rounding
    assert "load average" in out


def test_step_time_filter_gradients_match_numpy():
    """The ``filters`` section's three weight gradients of a 3x3 SAME convolution equal a
    numpy sum over taps of shifted inputs times the output gradient."""
    import numpy as np

    from benchmarks import step_time

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)
    dy = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 2, 6))
    for i in range(3):
        for j in range(3):
            want[i, j] = np.einsum("nhwc,nhwd->cd", xp[:, i : i + 5, j : j + 4], dy)
    for name, fn in step_time.FILTER_GRADS.items():
        np.testing.assert_allclose(np.asarray(fn(x, dy)), want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_step_time_filters_section_smoke(capsys):
    """``--sections filters --smoke``: one row per ResNet-18 stage, the forward pass and the
    three filter gradients timed."""
    from benchmarks import step_time

    assert step_time.main(["--sections", "filters", "--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == [
        "8x8, 2 -> 2",
        "4x4, 4 -> 4",
        "2x2, 8 -> 8",
        "1x1, 16 -> 16",
    ]
    assert "agree with XLA's" in out


def test_cpu_rounding_compares_each_setting_with_float64_on_every_batch():
    """``benchmarks/cpu_rounding.py`` on a tiny ResNet-18: a row per setting, a column per
    batch; the default gradient is float32 round-off away from the float64 one."""
    flag = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
    command = [sys.executable, "benchmarks/cpu_rounding.py", f"--flags={flag}"]
    command += ["--seeds", "0,1", "--width", "4", "--batch", "4", "--image", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0]] == ["setting", "batch 0", "batch 1"]
    assert [r[0].strip() for r in rows[1:]] == ["default (no flag)", f"`{flag}`"]
    for cell in rows[1][1:]:  # "median / worst (arrays within 1e-5/arrays)", in %
        median, rest = cell.strip().split(" / ")
        worst, arrays = rest.split(" (")
        assert float(median) <= float(worst) < 0.1
        assert arrays.endswith("/63)")  # 62 parameter arrays and the input gradient


def test_cpu_rounding_error_is_relative_to_each_arrays_largest_entry():
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cpu_rounding

    reference = [np.array([1.0, -4.0]), np.array([0.5])]
    got = [np.array([1.2, -4.0]), np.array([0.5])]
    assert cpu_rounding.errors(got, reference).tolist() == pytest.approx([0.05, 0.0])


def test_conv_profile_finds_every_convolution_of_resnet18_and_its_two_gradients():
    """``benchmarks/conv_profile.py`` reads the compiled ResNet-18 gradient: each of the 20
    convolutions (stem, 16 in the blocks, 3 projection shortcuts) once forward, once for the
    input gradient (the stem's too: the program also differentiates the images) and once
    for the filter gradient."""
    import collections

    import jax

    from benchmarks import conv_profile
    from benchmarks.step_time import build_conv_programs

    fn, args = build_conv_programs(width=2, batch_size=3, image_size=32)["+ weight grads"]
    kernels = {tuple(x.shape) for x in jax.tree_util.tree_leaves(args[0]) if x.ndim == 4}
    assert len(kernels) < 20  # several convolutions share a kernel shape
    parts = conv_profile.classify_hlo(fn.lower(*args).compile().as_text(), kernels)
    counts = collections.Counter(parts.values())
    assert counts["forward convolutions"] == 20
    assert counts["input-gradient convolutions"] == 20
    assert counts["filter-gradient convolutions"] == 20
    assert counts["layout copies"] > 0


def test_conv_profile_torch_ops_fall_into_the_parts():
    from benchmarks import conv_profile

    assert conv_profile.torch_part("aten::mkldnn_convolution") == "forward convolutions"
    assert conv_profile.torch_part("aten::convolution_backward") == "backward convolutions"
    assert conv_profile.torch_part("aten::copy_") == "layout copies"
    assert conv_profile.torch_part("aten::native_batch_norm") == "everything else"


def test_conv_profile_smoke_adds_up_to_the_wall_time():
    """``--smoke``: one process per framework, pinned to one core; the parts add up to
    about the wall time (one thread, nothing overlaps). Without PyTorch it says so."""
    out = subprocess.run(
        [sys.executable, "benchmarks/conv_profile.py", "--smoke"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| part")
    }
    for part in ("forward convolutions", "input-gradient convolutions", "layout copies"):
        assert part in rows
    total, wall = float(rows["sum of the parts"][0]), float(rows["wall time"][0])
    assert 0.5 * wall <= total <= 1.05 * wall
    if importlib.util.find_spec("torch") is None:
        assert "PyTorch is not installed" in out
    else:
        assert "backward convolutions" in rows
