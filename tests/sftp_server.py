"""A local SFTP server for tests: asyncssh's SFTP server on a loopback port, in a thread of the test process.

It speaks the SSH and SFTP protocols (version 3, as OpenSSH's sftp-server does, with its
`posix-rename@openssh.com` extension), serves one folder as its root (chroot) and lets in one user
with one key, which the test writes; jobs reach it as `sftp://USER@127.0.0.1:PORT/...` with
`--storage-options '{"key_filename": ...}'`, through fsspec's paramiko client, as they would reach
any SSH server. SFTP's plain rename does not replace a file and a write is a write in place: the
filesystem class for which the output's ledger is written in place (docs/restart.md).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import asyncssh

from tests.s3_server import free_port

USER = "bertbatch"


class SftpServer:
    """`root` served over SFTP on a free loopback port to USER with the key `key_file` (written here)."""

    def __init__(self, root: Path, keys: Path) -> None:
        self.root, self.port = root, free_port()
        keys.mkdir(parents=True, exist_ok=True)
        self.key_file = keys / "id_ed25519"
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.key_file))
        client_key.write_public_key(str(keys / "authorized_keys"))
        self._authorized = str(keys / "authorized_keys")
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._acceptor = None

    def url(self, path: str) -> str:
        return f"sftp://{USER}@127.0.0.1:{self.port}/{path.lstrip('/')}"

    def storage_options(self) -> dict:
        return {"key_filename": str(self.key_file), "look_for_keys": False, "allow_agent": False}

    def start(self) -> SftpServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        root = str(self.root).encode()

        async def listen():
            return await asyncssh.listen("127.0.0.1", self.port, server_host_keys=[self._host_key],
                                         authorized_client_keys=self._authorized,
                                         sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root))

        self._acceptor = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            # sessions of jobs killed mid-run are still waiting for their clients
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._acceptor is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
