"""tests/offline_venv.py: offline clones of the running environment, minus chosen packages."""

import subprocess

import offline_venv
import pytest


def test_closure_follows_requirements_and_skips_excluded():
    dists = offline_venv.closure(["optax"], exclude={"jaxlib"})
    assert {"optax", "jax", "numpy", "absl-py", "ml-dtypes"} <= set(dists)
    assert "sphinx" not in dists  # docs extra not asked for
    assert "jaxlib" not in dists
    with pytest.raises(LookupError, match="not installed"):
        offline_venv.closure(["no-such-distribution-cgh"], exclude=set())


def test_make_venv_clones_only_the_closure(tmp_path, monkeypatch):
    monkeypatch.setenv("CGH_VENV_CACHE", str(tmp_path))
    extra = {"cgh_probe.py": "VALUE = 42\n"}
    python = offline_venv.make_venv("probe", ["absl-py"], exclude=set(), extra_files=extra)
    code = (
        "import importlib.util, absl.flags, cgh_probe; "
        "print(cgh_probe.VALUE, importlib.util.find_spec('numpy') is None)"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["42", "True"]  # absl cloned, numpy (not asked for) absent
    # Reused, not rebuilt; another extra file gives another environment.
    assert offline_venv.make_venv("probe", ["absl-py"], set(), extra) == python
    other = offline_venv.make_venv("probe", ["absl-py"], set(), {"cgh_probe.py": "VALUE = 1\n"})
    assert other != python and len(list(tmp_path.iterdir())) == 2
