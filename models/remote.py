"""Checkpoints on object storage: copy a model folder once per node into a local cache.

    folder = local_model_folder("s3://models/bert-ner/", storage_options)   # -> Path on local disk

Every actor of a job calls this before `load_model` / `load_tokenizer`. The cache entry is named
after the folder's content — the object store's ETag (or fsspec's `ukey`) and size of every file —
so a changed checkpoint under the same URL gets a new entry, and the same checkpoint is copied
once per node however many actors (processes) ask for it: the first takes an exclusive file
lock and downloads, the others wait on the lock and find the entry complete. A download is made
in a temporary folder and renamed into place, so a killed download never looks complete.

The cache root is `$BERTBATCH_MODEL_CACHE`, else `~/.cache/bertbatch/models`. Storage options
(credentials) are used for the download only: they never enter a path, a log line or an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

CACHE_ENV = "BERTBATCH_MODEL_CACHE"
COMPLETE = ".complete"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bertbatch" / "models")


def local_model_folder(uri: str, storage_options: dict | None = None) -> Path:
    """A local folder with the checkpoint at `uri`: the folder itself when local, else the cached copy."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://"))
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    files = {path: info for path, info in listing.items() if info.get("type", "file") == "file"}
    if not files:
        raise FileNotFoundError(f"--model {uri!r}: no files found at that URL")
    entry = cache_root() / f"{Path(root).name}-{content_key(fs, root, files)}"
    if (entry / COMPLETE).is_file():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(entry.with_name(entry.name + ".lock")):
        if not (entry / COMPLETE).is_file():  # another process may have finished while we waited
            _download(fs, root, files, entry)
    return entry


def content_key(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict]) -> str:
    """sha256 over (relative path, size, ETag or fsspec ukey) of every file, 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(files):
        info = files[path]
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or fs.ukey(path)
        digest.update(f"{path[len(root):]}\0{info.get('size')}\0{str(tag).strip(chr(34))}\n".encode())
    return digest.hexdigest()[:16]


def _download(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict], entry: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for path in files:
            target = staging / path[len(root):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        (staging / COMPLETE).write_text("")
        if entry.exists():  # an incomplete entry left by a killed process (no COMPLETE marker)
            shutil.rmtree(entry)
        os.rename(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes of this node (released when the process dies)."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
