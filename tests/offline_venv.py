"""Second virtual environments cloned offline from the running one, for isolation tests.

``make_venv(name, distributions, exclude)`` creates (or reuses) a virtual environment that
holds exactly the named distributions and their transitive requirements, copied from the
environment that runs the tests: no network, no package index, no build. It is how a test
proves that something works *without* a package (TensorFlow, say) that the development
environment has.

How: ``python -m venv --without-pip``; the requirement closure is walked with
:mod:`importlib.metadata` (``Requires-Dist``, markers evaluated for this interpreter and for
the extras asked for; excluded names are skipped, with their own requirements); for every
distribution of the closure, the files listed in its ``RECORD`` that lie inside the running
environment's site-packages are hard-linked (copied where linking fails) into the new
site-packages. Console scripts and other files outside site-packages are left out, so tools
are run as ``python -m <module>``. ``extra_files`` (paths relative to the new site-packages ->
text) add e.g. a ``.pth`` naming a source checkout or a ``sitecustomize.py``.

The environment lives in ``$CGH_VENV_CACHE`` (default ``~/.cache/cgh_jax/venvs``) under
``<name>-<hash>``, where the hash covers the Python version, the closure's names and
versions, the excluded names and ``extra_files``: a change of any of them makes a new one.
It is built in a temporary directory and renamed into place, so concurrent test runs never
see a half-built environment.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from packaging.markers import default_environment
from packaging.requirements import Requirement

FORMAT = 1  # bump when the layout of the created environments changes


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Orbax_Checkpoint`` -> ``orbax-checkpoint``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, md.Distribution]:
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)  # first on sys.path wins, as for imports
    return found


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    env = default_environment()
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""}))


def closure(distributions: list[str], exclude: set[str]) -> dict[str, md.Distribution]:
    """The named distributions and everything they require, minus ``exclude``.

    Raises:
      LookupError: a needed distribution is not installed in the running environment.
    """
    installed = _installed()
    skip = {canonical(n) for n in exclude}
    todo = [Requirement(d) for d in distributions]
    extras_of: dict[str, set[str]] = {}
    result: dict[str, md.Distribution] = {}
    while todo:
        req = todo.pop()
        key = canonical(req.name)
        if key in skip:
            continue
        new_extras = set(req.extras) - extras_of.get(key, set())
        if key in result and not new_extras:
            continue
        if key not in installed:
            raise LookupError(
                f"distribution {req.name!r} (needed for {distributions}) is not installed in "
                f"{sys.prefix}; install it there, or exclude it."
            )
        extras_of.setdefault(key, set()).update(req.extras)
        dist = result[key] = installed[key]
        for text in dist.requires or []:
            sub = Requirement(text)
            if _wanted(sub, extras_of[key]):
                todo.append(sub)
    return result


def _site_packages(prefix: pathlib.Path) -> pathlib.Path:
    rel = pathlib.Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return prefix / rel


def _link(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_distribution(dist: md.Distribution, source_root: pathlib.Path, target: pathlib.Path):
    files = dist.files
    if files is None:
        raise LookupError(
            f"{dist.metadata['Name']} has no RECORD file list; it cannot be cloned offline."
        )
    for entry in files:
        src = pathlib.Path(os.path.normpath(dist.locate_file(entry)))
        try:
            rel = src.relative_to(source_root)
        except ValueError:
            continue  # console scripts, headers, data outside site-packages
        if src.is_file():
            _link(src, target / rel)


def venv_key(name: str, dists: dict[str, md.Distribution], exclude, extra_files) -> str:
    payload = json.dumps(
        {
            "format": FORMAT,
            "python": sys.version,
            "base": sys.base_prefix,
            "dists": sorted((k, d.version) for k, d in dists.items()),
            "exclude": sorted(canonical(n) for n in exclude),
            "extra_files": sorted((extra_files or {}).items()),
        }
    )
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def cache_root() -> pathlib.Path:
    default = pathlib.Path("~/.cache/cgh_jax/venvs").expanduser()
    return pathlib.Path(os.environ.get("CGH_VENV_CACHE", default))


def _python(prefix: pathlib.Path) -> pathlib.Path:
    return prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_venv(
    name: str,
    distributions: list[str],
    exclude: set[str],
    extra_files: dict[str, str] | None = None,
) -> pathlib.Path:
    """Creates or reuses an offline clone environment; returns its ``python``.

    Args:
      name: a short label for the directory name.
      distributions: requirement strings of the top-level distributions (``"jax"``,
        ``"flax"``, ``"pillow"``; extras such as ``"jax[cpu]"`` are honoured).
      exclude: distribution names left out together with whatever only they require.
      extra_files: ``{path relative to site-packages: text}`` written into the environment.

    Raises:
      LookupError: a needed distribution is missing from the running environment.
    """
    dists = closure(distributions, exclude)
    root = cache_root()
    prefix = root / venv_key(name, dists, exclude, extra_files)
    python = _python(prefix)
    if python.exists() and (prefix / "cgh-venv-complete").exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        # The venv is created at its final path's sibling and renamed: bin/python is a link
        # to the base interpreter and pyvenv.cfg names no path of the venv, so it stays valid.
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(tmp)],
            check=True,
            capture_output=True,
        )
        source_root = pathlib.Path(os.path.normpath(sysconfig.get_path("purelib")))
        target = _site_packages(tmp)
        for dist in dists.values():
            _copy_distribution(dist, source_root, target)
        for rel, text in (extra_files or {}).items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (tmp / "cgh-venv-complete").write_text(
            "\n".join(f"{k}=={d.version}" for k, d in sorted(dists.items())) + "\n"
        )
        try:
            os.rename(tmp, prefix)
        except OSError:  # another process finished first: use its copy
            if not (prefix / "cgh-venv-complete").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return python
