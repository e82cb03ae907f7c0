"""Checkpoints on object storage: copy a model folder once per node into a local cache.

    folder = local_model_folder("s3://models/bert-ner/", storage_options)   # -> Path on local disk

Every actor of a job calls this before `load_model` / `load_tokenizer`. The cache entry is named
after the folder's content — the object store's ETag (else the modification time) and size of every file —
so a changed checkpoint under the same URL gets a new entry, and the same checkpoint is copied
once per node however many actors (processes) ask for it: the first takes an exclusive file
lock and downloads, the others wait on the lock and find the entry complete. A download is made
in a temporary folder and renamed into place, so a killed download never looks complete; the lock
holder removes what killed downloads of its entry left. The folder is listed again after the copy: a
checkpoint replaced meanwhile (s3fs fetches a large file in concurrent ranges, so one file can mix two
versions) is refused rather than cached under the name of the content listed first.

Every process that uses an entry holds a shared lock on its folder while it lives; after each download the
cache is pruned to `$BERTBATCH_MODEL_CACHE_GB` GiB (default 20): least recently used entries first,
never one a live process holds (`prune`). The cache root is `$BERTBATCH_MODEL_CACHE`, else
`~/.cache/bertbatch/models`. Storage options (credentials) are used for the download only: they never
enter a path, a log line or an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

CACHE_ENV = "BERTBATCH_MODEL_CACHE"
CACHE_GB_ENV = "BERTBATCH_MODEL_CACHE_GB"
DEFAULT_CACHE_GB = 20.0
COMPLETE = ".complete"
_HELD: dict[Path, int] = {}    # entry -> its folder, shared-locked while this process lives: in use, never pruned
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
    if entry in _HELD and _is(entry, _HELD[entry]):
        return entry
    cache_limit()   # a mistyped limit fails before the download, not after it
    while not _hold(entry):
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            lock = _lock(entry)
        except OSError as error:   # e.g. a read-only home: say which knob moves the cache
            raise OSError(f"cannot create the model cache {entry.parent} ({error.strerror}); "
                          f"set {CACHE_ENV} to a writable folder") from None
        with open(lock) as handle:   # the download lock: one process of the node copies, the others wait
            fcntl.flock(handle, fcntl.LOCK_EX)
            if (entry / COMPLETE).is_file():  # another process finished it while we waited: hold it
                continue
            _keep(entry, _download(fs, root, files, entry))
        prune(keep=entry)
        break
    with contextlib.suppress(OSError):   # the last use, for pruning (another user's entry keeps its own stamp)
        os.utime(entry / COMPLETE)
    return entry


def _hold(entry: Path) -> bool:
    """Hold a complete entry in use while this process lives (a shared lock on its folder: `prune` passes
    it by); False when there is none to hold. A folder removed and made again is another inode: held anew."""
    try:
        folder = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    fcntl.flock(folder, fcntl.LOCK_SH)   # waits while a pruner removes it ...
    if not _is(entry, folder):           # ... and then finds it gone
        os.close(folder)
        return False
    _keep(entry, folder)
    return True


def _keep(entry: Path, folder: int) -> None:
    if entry in _HELD:
        os.close(_HELD[entry])
    _HELD[entry] = folder


def _is(entry: Path, folder: int) -> bool:
    """`folder` (an open descriptor) is still the complete entry at that path."""
    try:
        return os.path.samestat(os.stat(entry), os.fstat(folder)) and (entry / COMPLETE).is_file()
    except OSError:
        return False


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """The files below `root`. Zero-byte keys ending in "/" are folder markers (the S3 console's
    "Create folder", Hadoop's s3a), not files: copied as files they would block the real folder."""
    fs.invalidate_cache(root)   # a listing cached by the filesystem would hide a change
    listing = fs.find(root, detail=True)
    return {path: info for path, info in listing.items()
            if info.get("type", "file") == "file" and not path.endswith("/")}


# What tells a file's content changed, by filesystem: a content hash where the store keeps one, else the modification
# time. Not fsspec's `ukey` where a listing has either: it hashes the whole listing entry, access time included
# (SFTP's `time`), which the copy itself changes (a run's workers refused the model its driver had planned with).
CONTENT_TAGS = ("ETag", "etag", "md5Hash")
MODIFIED_TAGS = ("mtime", "LastModified", "last_modified", "updated", "modified")


def content_key(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict]) -> str:
    """sha256 over (relative path, size, content hash or modification time) of every file, 16 hex digits; fsspec's
    `ukey` where the listing has neither."""
    digest = hashlib.sha256()
    for path in sorted(files):
        info = files[path]
        tag = next((info[k] for k in (*CONTENT_TAGS, *MODIFIED_TAGS) if info.get(k)), None) or fs.ukey(path)
        digest.update(f"{path[len(root):]}\0{info.get('size')}\0{str(tag).strip(chr(34))}\n".encode())
    return digest.hexdigest()[:16]


def _download(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, dict], entry: Path) -> int:
    """Copy into a staging folder and rename it into place, held (its descriptor, shared-locked before the
    rename: no other process's `prune` can take it first); called with the entry's download lock held."""
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
        folder = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder, fcntl.LOCK_SH)
            os.rename(staging, entry)
        except BaseException:
            os.close(folder)
            raise
        return folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _lock(entry: Path) -> int:
    """The entry's download lock file, opened read-only (flock needs no write access, so another user's
    lock file in a shared cache can be waited on); created only when missing (O_CREAT on another user's
    file in a sticky folder is refused where `fs.protected_regular` is set)."""
    path = entry.with_name(entry.name + ".lock")
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)


def cache_limit() -> float:
    """Bytes the cache may hold: `$BERTBATCH_MODEL_CACHE_GB` GiB (default 20; `inf`: no limit)."""
    value = os.environ.get(CACHE_GB_ENV) or str(DEFAULT_CACHE_GB)
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit >= 0:   # NaN too
        raise ValueError(f"{CACHE_GB_ENV} must be a number of GiB (e.g. 20, 0.5 or inf), got {value!r}")
    return limit * 2**30


def prune(keep: Path) -> None:
    """Keep the cache under `cache_limit()`: remove what killed downloads left, then the least recently
    used entries that no live process holds (an entry in use is never removed, and `keep` neither)."""
    limit, root = cache_limit(), keep.parent
    for leftover in root.glob(".*.*"):            # `.{entry}.{suffix}`: a killed download or removal
        entry = root / leftover.name[1:].rsplit(".", 1)[0]
        if leftover.is_dir() and entry != keep:
            with contextlib.suppress(OSError), open(_lock(entry)) as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)   # not while a download of it stages there
                shutil.rmtree(leftover, ignore_errors=True)
    entries = {}                                   # entry -> (last use, bytes, owner)
    for entry in root.iterdir():
        with contextlib.suppress(OSError):        # e.g. removed meanwhile by another node-local run's pruning
            if not entry.name.startswith(".") and entry.is_dir():
                entries[entry] = ((entry / COMPLETE).stat().st_mtime,
                                  sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()), entry.stat().st_uid)
    total = sum(size for _, size, _ in entries.values())
    for entry, (_, size, owner) in sorted(entries.items(), key=lambda item: item[1][0]):
        if total <= limit:
            break
        if entry != keep and owner == os.geteuid() and _remove_unused(entry):
            total -= size   # (another user's copies in a shared cache are theirs to remove)


def _remove_unused(entry: Path) -> bool:
    """Remove the entry if no process holds it (the exclusive lock on its folder is free at once)."""
    try:
        folder = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        trash = entry.with_name(f".{entry.name}.pruned")
        os.rename(entry, trash)   # gone for readers at once; a removal cut short is a leftover
    except OSError:   # held (BlockingIOError), removed meanwhile, or not ours to rename
        return False
    else:
        shutil.rmtree(trash, ignore_errors=True)   # another pruner may be sweeping it as a leftover
        return True
    finally:
        os.close(folder)
