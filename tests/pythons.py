"""The CPythons installed on this machine (Debian's, pyenv's), for tests that need a Python other
than the one the module embeds (the test runner's)."""
import glob
import os
import subprocess
import sys

import pytest


def installed_pythons():
    """{"3.X": path} of Debian's python3 and pyenv's versions, newest patch release per minor."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = {}
    candidates = ["/usr/bin/python3"] + sorted(glob.glob(f"{pyenv_root}/versions/3.*/bin/python3"))
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            found.setdefault(out.stdout.strip(), path)
    return found


def other_python():
    """(version, path) of an installed Python whose minor version differs from the embedded one,
    else None."""
    embedded = f"{sys.version_info[0]}.{sys.version_info[1]}"
    others = sorted((v, p) for v, p in installed_pythons().items() if v != embedded)
    return others[0] if others else None


def venv_of_other_python(directory):
    """(version, path) of a virtualenv made in `directory` with another installed Python than the
    embedded one; skips the test when the machine has none."""
    other = other_python()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    version, python = other
    venv = directory / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    return version, venv


def venv_of_another_installation(directory):
    """A virtualenv made in `directory` with another installation of the embedded Python's
    minor version (pyenv's beside Debian's, say); skips the test when the machine has none."""
    embedded = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for path in sorted(glob.glob(f"{pyenv_root}/versions/{embedded}.*/bin/python3")):
        if os.path.realpath(os.path.dirname(os.path.dirname(path))) != os.path.realpath(sys.base_prefix):
            venv = directory / "venv"
            subprocess.run([path, "-m", "venv", "--without-pip", str(venv)], check=True)
            return path, venv
    pytest.skip(f"no other installation of Python {embedded} on this machine")
