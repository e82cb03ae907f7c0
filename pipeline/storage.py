"""Filesystems for the job's URLs (local paths, s3://, any fsspec protocol) and their secret options.

Credentials and endpoints come from each filesystem's standard chain (for S3: AWS_* variables,
profiles, web identity, instance profiles, `AWS_ENDPOINT_URL`). `--storage-options` adds explicit
fsspec options on top; they are carried as `StorageOptions`, whose repr never shows them, so a
config or stage printed in a log or an error cannot leak a secret.

S3 retries are set here (`S3_DEFAULTS`): botocore's `standard` mode retries throttling, HTTP
500/502/503/504 and dropped/timed-out connections with capped exponential backoff and jitter.
User options win, key by key (`config_kwargs` is merged one level down).
"""

from __future__ import annotations

import dataclasses
import json

import fsspec

S3_DEFAULTS: dict = {
    "config_kwargs": {
        "retries": {"max_attempts": 10, "mode": "standard"},   # ≤ 9 retries, backoff capped at 20 s
        "connect_timeout": 10,
        "read_timeout": 60,
    },
}
MASK = "**********"


@dataclasses.dataclass(frozen=True)
class StorageOptions:
    """fsspec options from `--storage-options` (a JSON object), hashable and never shown."""

    json_text: str = dataclasses.field(default="", repr=False)
    protocols: tuple[str, ...] = ("s3",)    # the remote protocols the user's options are for
    models: tuple[tuple[str, str], ...] = ()  # (URL, content key) of remote models as planned (models.remote.pin)

    @classmethod
    def parse(cls, text: str | None, uris: tuple[str, ...] = ()) -> StorageOptions:
        """Validate a JSON object; errors name the flag, never the value. `uris`: the job's URLs."""
        protocols = tuple(sorted({protocol_of(u) for u in uris} - {"file"})) or ("s3",)
        if not text:
            return cls(protocols=protocols)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON (line {error.lineno}, column {error.colno})") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object of fsspec options, got a JSON {type(value).__name__}")
        return cls(json.dumps(value, sort_keys=True), protocols)

    def as_dict(self) -> dict:
        return json.loads(self.json_text) if self.json_text else {}

    def __repr__(self) -> str:
        return f"StorageOptions({MASK if self.json_text else 'none'})"

    __str__ = __repr__


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def options_for(uri: str, storage: StorageOptions | None = None) -> dict:
    """The options to open `uri` with: our defaults for its protocol, then the user's."""
    user = storage.as_dict() if storage and protocol_of(uri) in storage.protocols else {}
    if protocol_of(uri) not in ("s3", "s3a"):
        return user
    merged = {**S3_DEFAULTS, **user}
    merged["config_kwargs"] = {**S3_DEFAULTS["config_kwargs"], **user.get("config_kwargs", {})}
    return merged


def filesystem(uri: str, storage: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """`fsspec.core.url_to_fs` with our options; the returned path has no protocol."""
    return fsspec.core.url_to_fs(uri, **options_for(uri, storage))


# Filesystems whose client one thread at a time may use: two threads waiting on one paramiko SFTP session
# deadlock (paramiko issue 1836; a job writing to an SFTP server hung reading its ledger with 8 threads).
SINGLE_THREADED = frozenset({"sftp", "ssh"})


def protocols(fs: fsspec.AbstractFileSystem) -> frozenset[str]:
    """Every name fsspec gives the filesystem's protocol (s3fs: s3, s3a)."""
    return frozenset({fs.protocol} if isinstance(fs.protocol, str) else fs.protocol)


def thread_safe(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether threads may share this filesystem instance (else they take turns, or get their own instance)."""
    return not protocols(fs) & SINGLE_THREADED


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Stores without rename, where one PUT makes an object appear complete (S3, GCS, Azure)."""
    return bool(protocols(fs) & {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def configure(storage: StorageOptions | None = None) -> None:
    """Make every filesystem this process opens for the job's protocols use our defaults + the user's options.

    Called once on the driver and once in every Ray worker before a stage is built, so code that
    opens a URL (`fsspec.core.url_to_fs(output)`) needs no options argument: fsspec's per-protocol
    config (`fsspec.config.conf`) supplies them to every new filesystem instance.
    """
    from models.remote import pin

    storage = storage or StorageOptions()
    pin(dict(storage.models))
    for protocol in {*storage.protocols, "s3"}:
        if protocol != "file":
            fsspec.config.conf[protocol] = options_for(f"{protocol}://", storage)
