"""The per-node cache of a model on object storage (models/remote.py), against moto's S3 server, without Ray.

What a data engineer's bucket and nodes do to it: folder markers from the S3 console, a download
killed half-way, a checkpoint replaced while a node copies it, a cache shared by several users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import s3fs

from models import remote
from models.remote import local_model_folder
from tests.s3_server import MotoS3

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bertbatch-remote-models"
KEY_ID, SECRET = "AKIAFAKEKEYID0REMOTE", "fakeSecret/remote+models"


@pytest.fixture(scope="module")
def server() -> Iterator[MotoS3]:
    server = MotoS3().start()
    s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, endpoint_url=server.endpoint, skip_instance_cache=True).mkdir(BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(server, tmp_path: Path, monkeypatch) -> Iterator[s3fs.S3FileSystem]:
    """The bucket through a fresh client; this process reaches it through the AWS environment, its cache is per test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()   # fsspec would hand out a client of another test's server
    yield s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, endpoint_url=server.endpoint, skip_instance_cache=True)
    s3fs.S3FileSystem.clear_instance_cache()   # ... and later tests one of this server, stopped by then


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_markers_are_not_copied_as_files(store) -> None:
    """The S3 console's "Create folder" (and Hadoop's s3a) leave zero-byte `name/` keys; a
    sentence-transformers folder made that way has one above `1_Pooling/config.json`."""
    root = f"{BUCKET}/markers/st"
    for key, data in {"/": b"", "/1_Pooling/": b"", "/config.json": b"{}", "/1_Pooling/config.json": b'{"p": 1}',
                      "/2_Dense/": b"", "/2_Dense/model.safetensors": b"dense"}.items():
        store.pipe_file(root + key, data)
    folder = local_model_folder(f"s3://{root}/")
    assert contents(folder) == {".complete": b"", "1_Pooling/config.json": b'{"p": 1}', "config.json": b"{}",
                                "2_Dense/model.safetensors": b"dense"}


def test_what_a_killed_download_left_is_removed_by_the_next_one(store) -> None:
    root = f"{BUCKET}/killed/ner"
    store.pipe_file(f"{root}/config.json", b"{}")
    store.pipe_file(f"{root}/model.safetensors", b"w" * 4096)
    entry = local_model_folder(f"s3://{root}")
    shutil.rmtree(entry)
    # a process killed (SIGKILL, OOM, preempted) while it copied: its staging folder, under mkdtemp's name
    leftover = entry.parent / f".{entry.name}.k1ll3d_x"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"w" * 1024)
    assert local_model_folder(f"s3://{root}") == entry and contents(entry)["model.safetensors"] == b"w" * 4096
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, entry.name + ".lock"]


def test_a_checkpoint_replaced_while_it_is_copied_is_not_cached_under_the_old_name(store, monkeypatch) -> None:
    """Listed as version A, fetched as B: the entry would be named after A and hold B (or a mix)."""
    root = f"{BUCKET}/replaced/ner"
    store.pipe_file(f"{root}/config.json", b'{"v": "A"}')
    store.pipe_file(f"{root}/model.safetensors", b"weights-A")
    fs = fsspec.core.url_to_fs(f"s3://{root}")[0]   # the instance local_model_folder gets (fsspec caches it)
    fetch = fs.get_file

    def replaced_meanwhile(rpath, lpath, *args, **kwargs):
        if rpath.endswith("config.json"):   # the new version's upload lands during this node's copy
            store.pipe_file(f"{root}/config.json", b'{"v": "B"}')
            store.pipe_file(f"{root}/model.safetensors", b"weights-B")
        return fetch(rpath, lpath, *args, **kwargs)

    monkeypatch.setattr(fs, "get_file", replaced_meanwhile)
    with pytest.raises(OSError, match="changed while they were being copied"):
        local_model_folder(f"s3://{root}")
    monkeypatch.setattr(fs, "get_file", fetch)
    assert not [p for p in remote.cache_root().iterdir() if p.is_dir()]   # nothing kept, nothing half-made

    store.pipe_file(f"{root}/config.json", b'{"v": "A"}')   # back to A: its entry must hold A's bytes
    store.pipe_file(f"{root}/model.safetensors", b"weights-A")
    assert contents(local_model_folder(f"s3://{root}"))["model.safetensors"] == b"weights-A"


def test_a_cache_shared_by_several_users_serves_each_of_them(store, request, monkeypatch) -> None:
    """Entries get the cache folder's read access (mkdtemp made them 0700), and another user's lock
    file is waited on rather than refused (it was opened for appending)."""
    shared = Path(tempfile.mkdtemp(prefix="bertbatch-shared-"))   # not under pytest's 0700 tmp folders
    shared.chmod(0o1777)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    monkeypatch.setenv(remote.CACHE_ENV, str(shared))
    for name in ("done", "started"):
        store.pipe_file(f"{BUCKET}/shared/{name}/config.json", name.encode())
    done = local_model_folder(f"s3://{BUCKET}/shared/done")
    assert done.stat().st_mode & 0o777 == 0o755
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return   # the second user's side needs root to switch users
    started = local_model_folder(f"s3://{BUCKET}/shared/started")
    shutil.rmtree(started)   # this user's attempt left its lock file (0644), not the entry
    assert Path(f"{started}.lock").is_file()
    def as_nobody(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               code], cwd="/", env={**os.environ, "HOME": "/nonexistent", "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=120)

    if as_nobody("import models.remote").returncode:
        pytest.skip("another user cannot run this checkout (a clone in a 0700 folder, as CI's)")
    other = as_nobody("import sys; from models.remote import local_model_folder as f; "
                      f"print(f('s3://{BUCKET}/shared/done'), f('s3://{BUCKET}/shared/started'))")
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout.split() == [str(done), str(started)]


def test_an_unwritable_cache_folder_names_the_variable_that_moves_it(store, tmp_path: Path, monkeypatch) -> None:
    store.pipe_file(f"{BUCKET}/unwritable/m/config.json", b"{}")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "a-file" / "models"))   # as a read-only home fails
    with pytest.raises(OSError, match=remote.CACHE_ENV):
        local_model_folder(f"s3://{BUCKET}/unwritable/m")


def test_a_worker_refuses_a_checkpoint_replaced_after_the_run_was_planned(store, monkeypatch) -> None:
    """The driver plans (and fingerprints) version A; a worker started later finds B at the same URL: it
    refuses instead of computing with weights the run's fingerprint does not name."""
    from pipeline.storage import StorageOptions, configure

    monkeypatch.setattr(remote, "_PINNED", {})
    monkeypatch.setattr(remote, "_SEEN", {})
    monkeypatch.setattr(fsspec.config, "conf", dict(fsspec.config.conf))
    uri = f"s3://{BUCKET}/pinned/ner"
    store.pipe_file(f"{BUCKET}/pinned/ner/model.safetensors", b"weights-A")
    local_model_folder(uri)                                   # the driver's plan
    planned = StorageOptions(models=remote.seen())
    assert [u for u, _ in planned.models] == [uri]
    store.pipe_file(f"{BUCKET}/pinned/ner/model.safetensors", b"weights-B")
    configure(planned)                                        # what every worker does before its stage
    with pytest.raises(OSError, match="its files changed since this run was planned"):
        local_model_folder(uri)


def resolve(uri: str) -> Path:
    """A copy made by another process (a finished job's actor): it holds nothing once it exits."""
    done = subprocess.run([sys.executable, "-c", "import sys; from models.remote import local_model_folder as f; "
                           "print(f(sys.argv[1]))", uri], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip())


def test_the_cache_stays_under_its_size_dropping_least_recently_used_copies_no_process_holds(store, monkeypatch) -> None:
    """Each checkpoint version stayed on the nodes for good; now a download prunes the cache to
    $BERTBATCH_MODEL_CACHE_GB, oldest use first, never a copy a live process loaded."""
    monkeypatch.setenv(remote.CACHE_GB_ENV, str(10_000 / 2**30))   # room for two 4 KB checkpoints
    uris = {name: f"s3://{BUCKET}/lru/{name}" for name in "abcd"}
    for name in uris:
        store.pipe_file(f"{BUCKET}/lru/{name}/model.safetensors", name.encode() * 4096)
    cache = remote.cache_root()
    kept = lambda: sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir())  # noqa: E731
    a, b = resolve(uris["a"]), resolve(uris["b"])
    resolve(uris["a"])                       # a used again: b is now the least recently used
    killed = cache / ".gone-0123456789abcdef.k1ll3d_x"   # a download killed long ago, its entry never asked for again
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"x" * 1024)
    resolve(uris["c"])
    assert kept() == ["a", "c"] and not killed.exists()

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from models.remote import local_model_folder as f; "
                               "f(sys.argv[1]); print('held', flush=True); sys.stdin.read()", uris["a"]],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"   # a job's actor with a loaded
        os.utime(a / remote.COMPLETE, (0, 0))         # ... and long unused copy
        resolve(uris["d"])
        assert kept() == ["a", "d"]                   # c went: a is in use
    finally:
        holder.communicate("", timeout=60)
    assert resolve(uris["b"]) == b and kept() == ["b", "d"]   # a's holder is gone: a goes now
    assert (b / "model.safetensors").read_bytes() == b"b" * 4096


def test_a_mistyped_cache_size_is_refused_before_the_download(store, monkeypatch) -> None:
    store.pipe_file(f"{BUCKET}/limit/m/config.json", b"{}")
    monkeypatch.setenv(remote.CACHE_GB_ENV, "20GB")
    with pytest.raises(ValueError, match=f"{remote.CACHE_GB_ENV} must be a number of GiB"):
        local_model_folder(f"s3://{BUCKET}/limit/m")
    assert not [p for p in remote.cache_root().glob("*") if p.is_dir()]


def test_a_copy_is_held_before_it_is_in_place(store, monkeypatch) -> None:
    """Another process pruning between the rename and the hold took the fresh copy away (then it was
    copied again, and two runs on a tight cache could take turns); `inf` keeps everything."""
    monkeypatch.setenv(remote.CACHE_GB_ENV, "0")
    for name in ("fresh", "other"):
        store.pipe_file(f"{BUCKET}/hold/{name}/model.safetensors", b"w" * 4096)
    other = resolve(f"s3://{BUCKET}/hold/other")
    prune, downloads = remote.prune, []
    real_download = remote._download

    def pruned_by_another_process_first(keep):   # the moment the lock is free again, before our own pruning
        code = "import sys; from pathlib import Path; from models import remote; remote.prune(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(other)], cwd=REPO, check=True, timeout=120)
        prune(keep)

    monkeypatch.setattr(remote, "prune", pruned_by_another_process_first)
    monkeypatch.setattr(remote, "_download", lambda *args: downloads.append(1) or real_download(*args))
    entry = local_model_folder(f"s3://{BUCKET}/hold/fresh")
    assert (entry / remote.COMPLETE).is_file() and len(downloads) == 1
    assert not other.exists()   # unheld: our own pruning to 0 bytes took it

    monkeypatch.setenv(remote.CACHE_GB_ENV, "inf")
    monkeypatch.setattr(remote, "prune", prune)
    assert resolve(f"s3://{BUCKET}/hold/other") == other and entry.is_dir()   # no limit: both stay


def test_the_content_key_follows_content_and_modification_time_not_access_time():
    """SFTP's listing holds each file's access time, which copying the file changes: a key over it (fsspec's
    `ukey`) made a run's workers refuse the checkpoint its driver had planned with (tests/test_sftp.py)."""
    import datetime

    from models.remote import content_key

    fs, when = fsspec.filesystem("memory"), datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)

    def key(**info):
        return content_key(fs, "/m", {"/m/model.safetensors": {"size": 3, "mtime": when, "time": when, **info}})

    assert key(time=when + datetime.timedelta(seconds=5)) == key()            # read since: the same checkpoint
    assert key(mtime=when + datetime.timedelta(seconds=5)) != key() != key(size=4)   # rewritten
    assert key(ETag='"abc"') != key(ETag='"abd"')                            # a content hash wins where there is one
