"""The GPU benchmark script runs end to end and needs nothing the GPU image lacks.

``benchmarks/gpu.sh`` is only run on a lent accelerator, so its ``--smoke`` mode (a tiny
ResNet, 2 steps) runs here on the CPU in a fresh process: it must time every optimizer,
measure the input pipeline and write its table without importing TensorFlow, TFDS, CLU,
ml_collections or Orbax (the accelerator image has JAX, flax, optax and numpy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RUN = """
import sys
sys.path.insert(0, "benchmarks")
import gpu
assert gpu.main(["--smoke", "--output", sys.argv[1]]) == 0
heavy = {"tensorflow", "tensorflow_datasets", "clu", "ml_collections", "orbax"}
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
