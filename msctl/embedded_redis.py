"""An embedded Redis for the lab and the tests: a real redis-server child process on a free
loopback port, or, when the binary is missing, fakeredis's TCP server in this process.

The lab's redis-server requires a password (generated, see `start_embedded`), given to it in a
config file of mode 0600, never on its command line, where `ps` would show it to every user.
redis-server runs with umask 077, so a file it writes (a CONFIG REWRITE, which a Sentinel
failover makes, would otherwise leave the password in a file of mode 0644) is its owner's only.
It runs in a process group of its own, so that Ctrl-C at the lab's terminal leaves it to the
lab to stop it last, after the servers and agents that use it.
"""

from __future__ import annotations

import ctypes
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis

from common.connection import redacted
from common.errors import LbError
from common.properties import atomic_write

READY_TIMEOUT = 10.0


class EmbeddedRedisError(LbError):
    """The embedded Redis could not be started, or did not answer in time."""


# libc is loaded here, in the parent, so that the forked child only makes one system call
# before exec (nothing that could wait on a lock another thread held at fork time).
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when its parent dies, so that a lab killed with
    SIGKILL still leaves nothing running (Linux; elsewhere a no-op)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_redis(
    url: str, timeout: float = READY_TIMEOUT, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until a PING to `url` answers; fail fast if `process` exits first, or if the
    password is refused."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.AuthenticationError as exc:  # a ConnectionError that waiting won't fix
                raise EmbeddedRedisError(f"redis at {redacted(url)}: {exc}") from None
            except redis.ConnectionError:
                pass
            if process is not None and process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {process.returncode} before answering"
                )
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"redis at {redacted(url)} did not answer within {timeout}s"
                )
            time.sleep(0.02)
    finally:
        client.close()


def new_password() -> str:
    """A password for an embedded Redis: 192 random bits, URL- and config-safe characters."""
    return secrets.token_urlsafe(24)


def config_string(value: str) -> str:
    """`value` as a double-quoted redis.conf argument (\\xHH escapes, which Redis reads)."""
    inner = "".join(
        chr(b) if 0x20 <= b <= 0x7E and b not in b'"\\' else f"\\x{b:02x}" for b in value.encode()
    )
    return f'"{inner}"'


class RedisServer:
    """One redis-server process. `persist=True` keeps an fsync'd AOF in `workdir`, so a
    killed and restarted server comes back with its data. With a `password`, clients must
    AUTH (it is in `url`); redis-server reads it from `workdir`/redis.conf, mode 0600, with
    `settings` (more redis.conf lines, e.g. `replicaof`), read again at each start."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persist: bool = False,
        password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.persist = persist
        self.password = password
        self.settings: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.kind = "redis-server"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def config_file(self) -> Path:
        return self.workdir / "redis.conf"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config_lines(self) -> list[str]:
        password = [f"requirepass {config_string(self.password)}"] if self.password else []
        return password + self.settings

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError("redis-server is not on PATH")
        # a config file, when there is one, must come first; the other options override it
        args = [binary, str(self.config_file)] if self.config_lines() else [binary]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.workdir), "--protected-mode", "no", "--daemonize", "no"]
        args += ["--logfile", str(self.workdir / "redis.log")]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self) -> RedisServer:
        """Start it (from the thread that will outlive it: PR_SET_PDEATHSIG fires when the
        thread that forked the child ends) and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = self.config_lines()
        if lines:
            atomic_write(self.config_file, "".join(f"{x}\n" for x in lines).encode(), mode=0o600)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - it makes one system call, see above
            umask=0o077,
            process_group=0,
        )
        wait_for_redis(self.url, process=self.process)
        return self

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no chance to save or say goodbye."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()


def _errors_keep_the_connection(handler: type[Any]) -> type[Any]:
    """fakeredis's TCP handler (2.40) closes a connection after any error reply, where Redis
    goes on: a script's first EVALSHA (NOSCRIPT, then redis-py loads it) cut the connection and
    the caller got ConnectionError. Here a command's error is a reply like any other."""

    class KeepOpenOnErrors(handler):  # type: ignore[misc]
        def setup(self) -> None:
            super().setup()
            read_response = self.current_client.read_response

            def reply_or_error() -> Any:
                try:
                    return read_response()
                except redis.ResponseError as exc:
                    return exc

            self.current_client.read_response = reply_or_error

    return KeepOpenOnErrors


class FakeRedisTcp:
    """fakeredis's TCP server in a thread: same interface as RedisServer, no kill/restart.

    No password: fakeredis (2.x) answers AUTH, but its TCP server runs every command of a
    client that never sent one, `requirepass` set or not (and took a wrong password when we
    tried), so a password would protect nothing. It listens on 127.0.0.1 only; anyone who can
    open a socket on this machine can use it. Install redis-server for a lab whose Redis
    requires a password.
    """

    kind = "fakeredis TcpFakeServer"
    pid = None  # it runs inside this process

    def __init__(self) -> None:
        try:
            from fakeredis import TcpFakeServer
        except ImportError:
            raise EmbeddedRedisError(
                "no redis-server binary and no fakeredis: install redis-server or "
                "the 'lab' extra (pip install 'indirect-agent-lb[lab]')"
            ) from None

        self.port = free_port()
        self._server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        handler = cast(type[Any], self._server.RequestHandlerClass)
        self._server.RequestHandlerClass = _errors_keep_the_connection(handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FakeRedisTcp:
        self._thread.start()
        wait_for_redis(self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    kill = stop


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


def start_embedded(workdir: Path) -> RedisServer | FakeRedisTcp:
    """A redis-server child that requires a new password (it is in the server's `url`) when
    the binary exists, else fakeredis's TCP server (no password, see FakeRedisTcp)."""
    server: RedisServer | FakeRedisTcp
    if have_redis_server():
        server = RedisServer(workdir, password=new_password())
    else:
        server = FakeRedisTcp()
    return server.start()
