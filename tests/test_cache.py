"""One cache root for everything edgetl can rebuild: EDGETL_CACHE, else XDG_CACHE_HOME/edgetl,
else ~/.cache/edgetl; every cache (features, extracted bundles, TensorRT engines) lives under it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl._cache import cache_root
from edgetl.adapt.feature_extraction import cached_features
from edgetl.cli import cli


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake home and no cache setting: each test sets only the variable it is about."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGETL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


def test_without_settings_the_cache_is_in_the_home_folder(home):
    assert cache_root() == home / ".cache" / "edgetl"


def test_xdg_cache_home_moves_the_cache(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "edgetl"


def test_a_relative_or_empty_xdg_cache_home_is_ignored(home, monkeypatch):
    for value in ("relative/cache", ""):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert cache_root() == home / ".cache" / "edgetl"


def test_edgetl_cache_wins_over_xdg_and_expands_the_home_folder(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.setenv("EDGETL_CACHE", "~/edgetl-cache")
    assert cache_root() == home / "edgetl-cache"


@pytest.mark.parametrize("variable", ["EDGETL_CACHE", "XDG_CACHE_HOME"])
def test_training_features_are_cached_under_the_root(home, tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, str(tmp_path / "chosen"))
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(cached_features({"test": variable}, lambda: features, (2, 3)), features)
    stored = list((tmp_path / "chosen").rglob("*.npy"))
    assert [p.parent for p in stored] == [cache_root() / "features"]
    assert not home.exists()  # nothing went to ~/.cache
    # the second call reads the stored file instead of computing again
    assert np.array_equal(cached_features({"test": variable}, lambda: pytest.fail("recomputed"), (2, 3)), features)


def _save(path, array) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=True)


# A shared or edited cache: an entry that is not the features asked for is computed again and replaced.
EDITED = {
    "other rows": lambda p: _save(p, np.zeros((3, 3), np.float32)),
    "other width": lambda p: _save(p, np.zeros((2, 4), np.float32)),
    "float64": lambda p: _save(p, np.zeros((2, 3), np.float64)),
    "pickled objects": lambda p: _save(p, np.array([[object()] * 3] * 2, dtype=object)),
    "NaN": lambda p: _save(p, np.full((2, 3), np.nan, np.float32)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-4]),
    "not npy": lambda p: p.write_bytes(b"features"),
    "empty": lambda p: p.write_bytes(b""),
    "a link elsewhere": lambda p: (p.unlink(), p.symlink_to(p.with_name("elsewhere.npy"))) and
    _save(p.with_name("elsewhere.npy"), np.ones((2, 3), np.float32)),
}


@pytest.mark.parametrize("edit", EDITED)
def test_an_edited_feature_cache_entry_is_computed_again(tmp_path, monkeypatch, edit):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    cached_features({"test": edit}, lambda: features, (2, 3))
    entry = next((tmp_path / "cache" / "features").glob("*.npy"))
    EDITED[edit](entry)
    assert np.array_equal(cached_features({"test": edit}, lambda: features, (2, 3)), features)
    assert not entry.is_symlink() and np.array_equal(np.load(entry), features)  # replaced by the good one


def test_build_help_names_the_cache_root():
    out = CliRunner().invoke(cli, ["build", "--help"], terminal_width=200).output
    assert "$EDGETL_CACHE, else $XDG_CACHE_HOME/edgetl," in out and "~/.cache/edgetl" in out
