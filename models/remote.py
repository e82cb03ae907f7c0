"""Checkpoints on object storage: copy a model folder once per node into a local cache.

    folder = local_model_folder("s3://models/bert-ner/", storage_options)   # -> Path on local disk

Every actor of a job calls this before `load_model` / `load_tokenizer`. The cache entry is named
after the folder's content — the object store's ETag (or fsspec's `ukey`) and size of every file —
so a changed checkpoint under the same URL gets a new entry, and the same checkpoint is copied
once per node however many actors (processes) ask for it: the first takes an exclusive file
lock and downloads, the others wait on the lock and find the entry complete. A download is made
in a temporary folder and renamed into place, so a killed download never looks complete; the lock
holder removes what killed downloads of its entry left. The folder is listed again after the copy: a
checkpoint replaced meanwhile (s3fs fetches a large file in concurrent ranges, so one file can mix two
versions) is refused rather than cached under the name of the content listed first.

The cache root is `$BERTBATCH_MODEL_CACHE`, else `~/.cache/bertbatch/models`. Storage options
(credentials) are used for the download only: they never enter a path, a log line or an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

CACHE_ENV = "BERTBATCH_MODEL_CACHE"
COMPLETE = ".complete"
_SEEN: dict[str, str] = {}     # URL -> content key of the copy this process resolved
_PINNED: dict[str, str] = {}   # URL -> content key the run was planned with (workers: `pin`)


def pin(keys: dict[str, str]) -> None:
    """The content each model URL must still have in this process: what the driver planned and fingerprinted
    (`seen` there). A worker started later (a restarted actor, an autoscaled node) refuses a replaced
    checkpoint instead of computing with other weights than `_run.json` and the restart identity name."""
    _PINNED.update(keys)


def seen() -> tuple[tuple[str, str], ...]:
    """(URL, content key) of every remote model this process resolved."""
    return tuple(sorted(_SEEN.items()))


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
    files = _listing(fs, root)
    if not files:
        raise FileNotFoundError(f"--model {uri!r}: no files found at that URL")
    key = content_key(fs, root, files)
    if _PINNED.get(uri, key) != key:
        raise OSError(f"--model {uri!r}: its files changed since this run was planned (the run's fingerprint is "
                      "of the files then); run again: a new run plans with what is there now")
    _SEEN[uri] = key
    entry = cache_root() / f"{Path(root).name}-{key}"
    if (entry / COMPLETE).is_file():
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:   # e.g. a read-only or missing home: say which knob moves the cache
        raise OSError(f"cannot create the model cache {entry.parent} ({error.strerror}); "
                      f"set {CACHE_ENV} to a writable folder") from None
    with _exclusive(entry.with_name(entry.name + ".lock")):
        if not (entry / COMPLETE).is_file():  # another process may have finished while we waited
            _download(fs, root, files, entry)
    return entry


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """The files below `root`. Zero-byte keys ending in "/" are folder markers (the S3 console's
    "Create folder", Hadoop's s3a), not files: copied as files they would block the real folder."""
    fs.invalidate_cache(root)   # a listing cached by the filesystem would hide a change
    listing = fs.find(root, detail=True)
    return {path: info for path, info in listing.items()
            if info.get("type", "file") == "file" and not path.endswith("/")}


def content_key(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict]) -> str:
    """sha256 over (relative path, size, ETag or fsspec ukey) of every file, 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(files):
        info = files[path]
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or fs.ukey(path)
        digest.update(f"{path[len(root):]}\0{info.get('size')}\0{str(tag).strip(chr(34))}\n".encode())
    return digest.hexdigest()[:16]


def _download(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict], entry: Path) -> None:
    """Copy into a staging folder and rename it into place; called with the entry's lock held."""
    for leftover in entry.parent.glob(glob.escape(f".{entry.name}.") + "*"):  # killed downloads (no other
        shutil.rmtree(leftover, ignore_errors=True)                          # process stages without the lock)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    # mkdtemp makes the folder 0700: give the entry the cache folder's read access (never write
    # access) so a cache shared by several users serves every one of them.
    staging.chmod(entry.parent.stat().st_mode & 0o755)
    try:
        for path in files:
            target = staging / path[len(root):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        if content_key(fs, root, _listing(fs, root)) != content_key(fs, root, files):
            raise OSError(f"--model {fs.unstrip_protocol(root)!r}: its files changed while they were being "
                          "copied (an upload in progress?); run again once the checkpoint is complete")
        (staging / COMPLETE).write_text("")
        if entry.exists():  # an incomplete entry left by a killed process (no COMPLETE marker)
            shutil.rmtree(entry)
        os.rename(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes of this node (released when the process dies).

    Opened read-only (flock needs no write access), so another user's lock file in a shared cache
    can be waited on; created only when missing (O_CREAT on another user's file in a sticky folder
    is refused where `fs.protected_regular` is set).
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    with open(fd) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
