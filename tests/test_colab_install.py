"""The notebooks' first cell: one repository address, and a Colab install that keeps Colab's
own packages.

The install test runs the cell (taken from a notebook) in a second virtual environment that
plays a Colab runtime: it holds jax and the other requirements, a ``tensorflow``
distribution (not ``tensorflow-cpu``, which is what pyproject names) and lacks one
requirement. Everything happens offline: the environment is cloned from this one
(``tests/offline_venv.py``), pip reads no index, and the missing requirement comes from a
wheel built here from its installed files.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import nbformat
import offline_venv  # tests/offline_venv.py (pytest puts tests/ on sys.path)
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = re.compile(r"https://colab\.research\.google\.com/github/([^)\s\"']+)")
#: The requirement left out of the fake runtime, for the cell to install (no dependencies).
MISSING = "importlib_resources"
FAKE_TF_VERSION = "2.99.0"


def repository() -> str:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Homepage"] == urls["Repository"]
    return urls["Repository"]


def first_cells() -> dict[str, str]:
    cells = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cells[path.stem] = next(c.source for c in nb.cells if c.cell_type == "code")
    return cells


def test_first_cell_is_the_same_in_every_notebook():
    cells = first_cells()
    assert len(cells) >= 4
    assert len(set(cells.values())) == 1, f"first cells differ: {sorted(cells)}"


def test_repository_address_agrees_with_pyproject():
    repo = repository()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo)
    cell = next(iter(first_cells().values()))
    assert f'REPO_URL = "{repo}"' in cell
    # Every Colab link (README, docs, the notebooks' badges) opens a notebook of that repository.
    github_path = repo.removeprefix("https://github.com/")
    names = {p.name for p in NOTEBOOKS}
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "docs" / "notebooks.md"]}
    texts.update({p: p.read_text() for p in NOTEBOOKS})
    for path, text in texts.items():
        for link in COLAB.findall(text):
            prefix = f"{github_path}/blob/main/notebooks/"
            assert link.startswith(prefix), f"{path.name}: {link}"
            assert link.removeprefix(prefix) in names, f"{path.name}: {link}"
    for path in NOTEBOOKS:  # each notebook carries its own badge
        assert f"{github_path}/blob/main/notebooks/{path.name}" in texts[path], path.name


def test_outside_colab_the_cell_installs_nothing(monkeypatch, capsys):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"ran a command outside Colab: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    exec(compile(next(iter(first_cells().values())), "first_cell", "exec"), {})
    assert capsys.readouterr().out.startswith("cgh-jax ")  # only the import check


# --------------------------------------------------------------------------- in a fake Colab


def _requirement_names() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9._-]+", d).group() for d in deps]


def _fake_tensorflow() -> dict[str, str]:
    """A ``tensorflow`` distribution (metadata and an empty package), as Colab's stands in."""
    info = f"tensorflow-{FAKE_TF_VERSION}.dist-info"
    return {
        "tensorflow/__init__.py": f'__version__ = "{FAKE_TF_VERSION}"\n',
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: tensorflow\nVersion: {FAKE_TF_VERSION}\n"
        ),
        f"{info}/INSTALLER": "pip\n",
        f"{info}/RECORD": (
            f"tensorflow/__init__.py,,\n{info}/METADATA,,\n{info}/INSTALLER,,\n{info}/RECORD,,\n"
        ),
    }


def _wheel_from_installed(name: str, out_dir: pathlib.Path) -> pathlib.Path:
    """A wheel of an installed pure-Python distribution, from the files its RECORD lists."""
    dist = md.distribution(name)
    tag = "py3-none-any"
    wheel_name = f"{offline_venv.canonical(name).replace('-', '_')}-{dist.version}-{tag}.whl"
    path = out_dir / wheel_name
    with zipfile.ZipFile(path, "w") as zf:
        for entry in dist.files:
            source = pathlib.Path(dist.locate_file(entry))
            if "__pycache__" in entry.parts or not source.is_file() or ".." in entry.parts:
                continue
            zf.write(source, entry.as_posix())
    return path


def _source_copy(tmp_path: pathlib.Path, python: pathlib.Path) -> pathlib.Path:
    """The repository's tracked files, as a user would upload them."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    copy = tmp_path / "cgh-jax"
    for rel in filter(None, files):
        src = ROOT / rel.decode()
        if src.is_file():
            dst = copy / rel.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    setuptools = subprocess.run(
        [str(python), "-c", "import setuptools; print(setuptools.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if int(setuptools.split(".")[0]) < 77:
        # The offline build uses the environment's own setuptools; before 77 it reads the
        # license only as a table (PEP 639's string form came with 77).
        pyproject = copy / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(
            re.sub(r'^license = "(.*)"$', r'license = {text = "\1"}', text, count=1, flags=re.M)
        )
    return copy


def _runtime(cached: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A fresh environment on top of the cached one: the cached site-packages come through a
    ``.pth`` file, and whatever the cell installs lands in the fresh one, so the cache
    (hard links into this environment) is never written."""
    prefix = tmp_path / "runtime"
    subprocess.run(
        [str(cached), "-m", "venv", "--without-pip", str(prefix)], check=True, capture_output=True
    )
    python = prefix / "bin" / "python"

    def purelib(py):
        return subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    (pathlib.Path(purelib(python)) / "colab_runtime.pth").write_text(purelib(cached) + "\n")
    return python


def _versions(python: pathlib.Path, names: list[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as md, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = md.version(n)\n"
        "    except md.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    # Not from the repository root: its cgh_jax.egg-info (from `pip install -e .`) would be
    # found on the path of `python -c`.
    result = subprocess.run(
        [str(python), "-c", code, *names],
        capture_output=True,
        text=True,
        check=True,
        cwd=python.parent,
    )
    return json.loads(result.stdout)


@pytest.mark.slow
def test_colab_install_keeps_the_runtime_packages(tmp_path):
    runtime = [n for n in _requirement_names() if n not in ("tensorflow-cpu", MISSING)]
    cached = offline_venv.make_venv(
        "colab",
        [*runtime, "pip", "setuptools", "wheel"],
        exclude={"tensorflow-cpu", "tensorflow", MISSING},
        extra_files=_fake_tensorflow(),
    )
    python = _runtime(cached, tmp_path)
    watched = ["jax", "jaxlib", "flax", "optax", "numpy", "tensorflow", "tensorflow-cpu", MISSING]
    before = _versions(python, [*watched, "cgh-jax"])
    assert before["tensorflow"] == FAKE_TF_VERSION and before["tensorflow-cpu"] is None
    assert before[MISSING] is None and before["cgh-jax"] is None

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel_from_installed(MISSING, wheels)
    source = _source_copy(tmp_path, python)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "COLAB_RELEASE_TAG": "test",
        "CGH_JAX_SOURCE": str(source),
        # pip offline: no configuration files, no index, wheels from one directory, builds
        # with the environment's own setuptools.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PYTHONNOUSERSITE": "1",
    }
    cell = tmp_path / "first_cell.py"
    cell.write_text(next(iter(first_cells().values())))
    result = subprocess.run(
        [str(python), str(cell)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"added: importlib[-_]resources>=", result.stdout), result.stdout
    assert "cgh-jax 0.1.0" in result.stdout  # `import cgh_jax` at the end of the cell

    after = _versions(python, [*watched, "cgh-jax"])
    for name in watched:
        if name != MISSING:
            assert after[name] == before[name], name
    assert after[MISSING] == md.version(MISSING)
    assert after["cgh-jax"] == "0.1.0"
    # Imported from the installed copy, not from this checkout.
    where = subprocess.run(
        [str(python), "-c", "import cgh_jax; print(cgh_jax.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "site-packages" in where and str(ROOT) not in where


@pytest.mark.slow
def test_unreachable_source_says_how_to_install_from_a_copy(tmp_path):
    python = _runtime(offline_venv.make_venv("colab-pip", ["pip"], exclude=set()), tmp_path)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "COLAB_RELEASE_TAG": "test",
        "CGH_JAX_SOURCE": str(tmp_path / "no-such-copy"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PYTHONNOUSERSITE": "1",
    }
    cell = tmp_path / "first_cell.py"
    cell.write_text(next(iter(first_cells().values())))
    result = subprocess.run(
        [str(python), str(cell)], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Could not install cgh-jax from" in result.stderr
    assert "CGH_JAX_SOURCE" in result.stderr
