"""The notebooks run top to bottom, and are stored with the outputs of a full-size run.

Every notebook is executed in a fresh kernel of this interpreter at the size given by
CGH_NOTEBOOK_SIZE (default 'ci', the short run; the README's test command sets it), with its
training runs in a temporary directory. A failing cell fails the test with its traceback.
"""

import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ("analysis", "easy_hard", "label_noise", "quickstart")


def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", REPO_ROOT / "scripts" / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
NOTEBOOKS = runner.list_notebooks()


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_notebook_is_present():
    assert tuple(p.stem for p in NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_stored_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert set(nb.metadata) <= set(runner.CLEAN_METADATA), "re-run scripts/execute_notebooks.py"

    cells = _code_cells(nb)
    setup = cells[0].source
    assert 'REPO_URL = "https://github.com/cgh-jax/cgh-jax"' in setup
    assert '"google.colab" in sys.modules' in setup
    assert any('os.environ.get("CGH_NOTEBOOK_SIZE", "full")' in c.source for c in cells)

    # Executed top to bottom in one kernel, without errors, with figures visible on GitHub.
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"not stored executed top to bottom (execution counts {counts}): "
        "run scripts/execute_notebooks.py"
    )
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no stored figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    size = os.environ.get("CGH_NOTEBOOK_SIZE", "ci")
    nb = runner.execute_notebook(path, size=size, workdir=tmp_path, timeout=600)
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"


def test_unknown_notebook_name_is_a_clear_error():
    with pytest.raises(ValueError, match="choose from"):
        runner.list_notebooks(["no_such_notebook"])


def test_kernel_env_sets_size_and_drops_fake_devices(monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    env = runner.kernel_env("ci", tmp_path)
    assert env["CGH_NOTEBOOK_SIZE"] == "ci"
    assert env["CGH_NOTEBOOK_WORKDIR"] == str(tmp_path)
    assert env["XLA_FLAGS"] == "--xla_foo=1"
    with pytest.raises(ValueError, match="size must be one of"):
        runner.kernel_env("huge", tmp_path)
