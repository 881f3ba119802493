"""Running code in a fresh Python process where TensorFlow and TFDS cannot be imported.

``GUARD`` is Python source that installs an import hook refusing ``tensorflow`` and
``tensorflow_datasets`` (and their submodules): the import raises ``ModuleNotFoundError`` and
the attempt is appended to the file named by ``$CGH_TF_IMPORT_LOG`` (when set), so a test
can assert that nothing even tried. It runs as ``sitecustomize`` in a clone environment
(``tests/offline_venv.py``) or ahead of a ``-c`` script here.
"""

from __future__ import annotations

import os
import subprocess
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets")

GUARD = f'''
import importlib.abc as _abc
import importlib.machinery as _machinery
import os as _os
import sys as _sys


class _RefuseTensorFlow(_abc.MetaPathFinder, _abc.Loader):
    """Finds tensorflow / tensorflow_datasets, then refuses to load them (and logs it);
    probes such as importlib.util.find_spec see a spec but import nothing."""

    blocked = {BLOCKED!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            return _machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        log = _os.environ.get("CGH_TF_IMPORT_LOG")
        if log:
            with open(log, "a") as f:
                f.write(spec.name + "\\n")
        raise ModuleNotFoundError(
            f"import of {{spec.name}} refused: this environment has no TensorFlow",
            name=spec.name,
        )

    def exec_module(self, module):
        raise ModuleNotFoundError(module.__name__)


_sys.meta_path.insert(0, _RefuseTensorFlow())
'''


def run(code: str, *, python: str = sys.executable, log: str | None = None, timeout=600, env=None):
    """Runs ``code`` after ``GUARD`` in a new process; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    if log:
        full_env["CGH_TF_IMPORT_LOG"] = log
    return subprocess.run(
        [python, "-c", GUARD + "\n" + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
