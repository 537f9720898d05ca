"""What ``pip install .`` puts into site-packages, and how ``fastcifar.kernels`` resolves from a checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built without network access (the venv's setuptools)."""
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=out)
    (built,) = out.glob("fastcifar-*.whl")
    return built


def test_wheel_installs_only_fastcifar(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"fastcifar"}
    # kernels/ of the checkout is the package fastcifar.kernels; bench/ and tests/ stay out.
    assert "fastcifar/kernels/sk_select.py" in names and "fastcifar/kernels/zpool.py" in names
    assert not any(name.startswith(("bench/", "kernels/", "tests/")) for name in names)


def test_checkout_resolves_fastcifar_kernels_to_its_own_folder(tmp_path):
    """From an uninstalled checkout (PYTHONPATH, as the GPU suite runs) the kernels beside it are used."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import fastcifar.kernels._tiles as t, fastcifar; print(t.__file__); print(fastcifar.__file__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tiles, package = done.stdout.split()
    assert Path(tiles) == REPO / "kernels" / "_tiles.py"
    assert Path(package) == REPO / "fastcifar" / "__init__.py"
