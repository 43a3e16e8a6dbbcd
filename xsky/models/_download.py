"""Weights from a model card's pinned URLs, into a local cache, checked against the digests.

Downloads happen only when asked for (``weights="download"`` or :func:`download_weights`);
a cached copy is used again only if every file still has the card's sha256. Files are
written to a temporary name next to their final place and renamed once their digest matches,
so an interrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..exceptions import ArgumentError, CheckpointError
from .card import ModelCard

__all__ = ["cached_weights", "fetch_weights", "weights_cache_dir"]

_CHUNK = 1 << 20


def weights_cache_dir() -> Path:
    """Where downloaded weights live: ``$XSKY_WEIGHTS_DIR``, else
    ``$XDG_CACHE_HOME/xsky/weights``, else ``~/.cache/xsky/weights``."""
    env = os.environ.get("XSKY_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xsky" / "weights"


def _folder(card: ModelCard, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else weights_cache_dir()
    # one folder per set of digests: a card whose files change never reuses stale files
    key = hashlib.sha256("".join(w.sha256 or "" for w in card.weights).encode()).hexdigest()
    return root / card.name / key[:12]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _downloadable(card: ModelCard) -> None:
    if not card.weights:
        raise ArgumentError(f"model {card.name!r} has no weight files to download")
    for w in card.weights:
        if w.url is None or w.sha256 is None:
            what = "pinned URL" if w.url is None else "known sha256"
            raise CheckpointError(
                f"weight file {w.name!r} of model {card.name!r} has no {what} on its model card "
                f"({w.source or 'no source given'}), so xsky will not download it; download it "
                "yourself and pass weights=<local path>"
            )


def cached_weights(card: ModelCard, cache_dir: str | os.PathLike[str] | None = None
                   ) -> Path | None:
    """The cache folder holding every weight file of ``card`` with its pinned digest, or
    ``None`` when any is missing (or the card pins no digest)."""
    if not card.weights or any(w.sha256 is None for w in card.weights):
        return None
    folder = _folder(card, cache_dir)
    for w in card.weights:
        path = folder / w.name
        if not path.is_file() or _sha256(path) != w.sha256:
            return None
    return folder


def fetch_weights(card: ModelCard, *, cache_dir: str | os.PathLike[str] | None = None,
                  timeout: float = 60.0) -> Path:
    """Download the weight files of a model card from their pinned URLs into the cache
    (:func:`xsky.models.download_weights` takes a model name).

    Parameters
    ----------
    card
        The model card; every weight file needs a pinned URL and a sha256.
    cache_dir
        Cache root (default :func:`weights_cache_dir`).
    timeout
        Seconds to wait for the server.

    Returns
    -------
    pathlib.Path
        The folder holding the files; pass it as ``weights=``.

    Raises
    ------
    CheckpointError
        No pinned URL or digest; the download failed; a file's sha256 differs from the card's
        (the partial file is removed, nothing else is touched).
    """
    _downloadable(card)
    found = cached_weights(card, cache_dir)
    if found is not None:
        return found
    folder = _folder(card, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for w in card.weights:
        final = folder / w.name
        if final.is_file() and _sha256(final) == w.sha256:
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=f".{w.name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            assert w.url is not None
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(w.url, timeout=timeout) as r:
                for block in iter(lambda: r.read(_CHUNK), b""):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != w.sha256:
                raise CheckpointError(
                    f"the download of {w.name!r} for model {card.name!r} from {w.url} has sha256 "
                    f"{h.hexdigest()}, not the {w.sha256} its model card pins; the file was "
                    "discarded. The source changed or the transfer was corrupted: retry, or "
                    "download it yourself and pass weights=<local path>"
                )
            os.replace(tmp, final)
        except CheckpointError:
            raise
        except OSError as err:  # URLError is an OSError
            raise CheckpointError(
                f"could not download {w.name!r} for model {card.name!r} from {w.url}: {err}. "
                "Without network access, download it elsewhere and pass weights=<local path>"
            ) from err
        finally:
            if tmp.exists():
                tmp.unlink()
    return folder

