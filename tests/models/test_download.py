"""Weights from a card's pinned URLs: digests checked, nothing torn left behind, the cache
reused only while its files match (file:// URLs: no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xsky.exceptions import CheckpointError
from xsky.models import ModalitySpec, ModelCard, ModelSpec, WeightFile, download_weights
from xsky.models._download import cached_weights, weights_cache_dir

SPEC = ModelSpec("dl-test", (ModalitySpec("s2", ("B02",)),), window=4, stride=4, feature_dim=2)


def _card(tmp_path: Path, payload: bytes = b"weights-bytes", digest: str | None = None
          ) -> tuple[ModelCard, Path]:
    src = tmp_path / "server" / "w.pt"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    sha = digest or hashlib.sha256(payload).hexdigest()
    card = ModelCard.from_spec(SPEC, weights=(WeightFile("w.pt", sha, src.as_uri()),))
    return card, src


def test_download_writes_the_file_under_its_name_and_digest(tmp_path: Path) -> None:
    card, _ = _card(tmp_path)
    folder = download_weights(card, cache_dir=tmp_path / "cache")
    assert (folder / "w.pt").read_bytes() == b"weights-bytes"
    assert folder.is_relative_to(tmp_path / "cache" / "dl-test")
    assert cached_weights(card, tmp_path / "cache") == folder
    assert [p.name for p in folder.iterdir()] == ["w.pt"]  # no temporary left


def test_a_wrong_digest_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    card, _ = _card(tmp_path, digest="0" * 64)
    with pytest.raises(CheckpointError, match="not the 0000"):
        download_weights(card, cache_dir=tmp_path / "cache")
    folder = next((tmp_path / "cache" / "dl-test").iterdir())
    assert list(folder.iterdir()) == []
    assert cached_weights(card, tmp_path / "cache") is None


def test_a_cached_file_that_changed_is_not_reused(tmp_path: Path) -> None:
    card, _ = _card(tmp_path)
    folder = download_weights(card, cache_dir=tmp_path / "cache")
    (folder / "w.pt").write_bytes(b"tampered")
    assert cached_weights(card, tmp_path / "cache") is None
    again = download_weights(card, cache_dir=tmp_path / "cache")  # fetched again, verified
    assert (again / "w.pt").read_bytes() == b"weights-bytes"


def test_an_unreachable_url_says_how_to_work_offline(tmp_path: Path) -> None:
    card, src = _card(tmp_path)
    src.unlink()
    with pytest.raises(CheckpointError, match="weights=<local path>"):
        download_weights(card, cache_dir=tmp_path / "cache")


def test_a_card_without_a_pinned_url_is_not_downloaded(tmp_path: Path) -> None:
    card = ModelCard.from_spec(SPEC, weights=(WeightFile("w.pt", None, None, "on request"),))
    with pytest.raises(CheckpointError, match="has no pinned URL"):
        download_weights(card, cache_dir=tmp_path)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("XSKY_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights_cache_dir() == tmp_path / "w"
    monkeypatch.delenv("XSKY_WEIGHTS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache_dir() == tmp_path / "xdg" / "xsky" / "weights"
