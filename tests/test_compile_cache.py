"""The compile cache: --compile_cache points Inductor and Triton at one folder, checked and restored."""

from __future__ import annotations

import os

import pytest

from fastcifar.errors import UserError
from fastcifar.training.compile_cache import (
    INDUCTOR_ENV,
    TRITON_ENV,
    cache_counts,
    check_cache_dir,
    compile_cache,
    counts_since,
    default_cache_dir,
    resolve_cache_dir,
)


def test_the_flag_points_inductor_and_triton_at_the_folder_and_restores(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.setenv(TRITON_ENV, "/elsewhere")
    folder = tmp_path / "cache"
    with compile_cache(str(folder)) as used:
        assert used == str(folder) and folder.is_dir()
        assert cache_dir() == str(folder)  # where Inductor itself now reads and writes
        assert triton_cache_dir(0) == str(folder / "triton")
    assert INDUCTOR_ENV not in os.environ and os.environ[TRITON_ENV] == "/elsewhere"


def test_without_the_flag_the_environment_decides(tmp_path, monkeypatch):
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    assert resolve_cache_dir(None) == (default_cache_dir(), "default")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductors

    assert default_cache_dir() == inductors()
    monkeypatch.setenv(INDUCTOR_ENV, str(tmp_path / "env"))
    with compile_cache(None) as used:
        assert used == str(tmp_path / "env") and os.environ[INDUCTOR_ENV] == used
    assert resolve_cache_dir(str(tmp_path / "flag")) == (str(tmp_path / "flag"), "--compile_cache")
    with compile_cache(str(tmp_path / "unused"), enabled=False) as used:  # an eager run
        assert used is None and os.environ[INDUCTOR_ENV] == str(tmp_path / "env")
    assert not (tmp_path / "unused").exists()


def test_an_unwritable_cache_is_one_line_naming_its_source(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write the compile cache .*a-file/cache \(--compile_cache\)") as err:
        with compile_cache(str(blocker / "cache")):
            pass
    assert "\n" not in str(err.value) and "pass a writable --compile_cache DIR" in str(err.value)
    assert os.environ.get(INDUCTOR_ENV) != str(blocker / "cache")
    monkeypatch.setenv(INDUCTOR_ENV, str(blocker / "cache"))
    with pytest.raises(UserError, match=f"\\({INDUCTOR_ENV}\\)"):
        with compile_cache(None):
            pass
    with pytest.raises(UserError, match="Inductor's default"):
        check_cache_dir(blocker / "cache", "default")


def test_counts_are_inductors_own_counters(monkeypatch):
    from torch._dynamo.utils import counters

    before = cache_counts()
    counters["inductor"]["fxgraph_cache_hit"] += 2
    counters["inductor"]["fxgraph_cache_miss"] += 1
    try:
        assert counts_since(before) == {"hits": 2, "misses": 1, "bypasses": 0}
    finally:
        counters["inductor"]["fxgraph_cache_hit"] -= 2
        counters["inductor"]["fxgraph_cache_miss"] -= 1
