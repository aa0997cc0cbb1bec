"""Hub benchmark over real processes: ``python -m bot serve --role gateway|worker|all`` driven by a
separate load generator, side by side with a bare aiohttp handler measured in the same run.

Run: ``.venv/bin/python bench/hub.py`` (``make bench``). It needs Redis and RabbitMQ
(``--redis`` / ``--amqp``, default ``$REDIS_URL`` / ``$RABBITMQ_URL`` or the local ones); it
declares its own queues (a fresh ``queue.name``) and keys (a fresh ``state.key_prefix``) and
deletes them at the end. Every figure is measured in this run, on this machine.

Processes: this script is the load generator (a minimal HTTP/1.1 keep-alive client on asyncio,
so that generating load costs as little CPU as possible on a small box); the servers, the
bare handler and the fake WeCom API each run in a process of their own.

1. WeCom app callbacks into a gateway (``--role gateway``) with *no worker*: every request a
   new MsgId, signed and encrypted as WeCom does; the gateway verifies, decrypts, deduplicates
   in Redis, publishes with a publisher confirm and answers 200. No worker runs so that the
   gateway's own cost is what is measured (on 2 cores a worker would take CPU from it); the
   events wait in RabbitMQ (``queue.max_length`` 100 000 per partition, far more than one run
   fills) and are purged afterwards. Compared with a bare aiohttp handler that reads the same
   request body and returns a constant. Before the servers start, the load generator measures the
   client libraries' own CPU (one redis-py round trip, one aio-pika publish with a confirm) and
   prints the highest ratio a one-process gateway on them can reach ("floor").
2. ``POST /chat`` FAQ turns through the whole hub in one process (``--role all``, state in
   Redis, in-process queue, FAQ engine, dialogue graph on): one conversation per connection
   (``--concurrency`` distinct ``user_id``), against the same bare handler.
3. Answered turns per second with 1 and with 2 worker processes behind one gateway, over
   RabbitMQ: WeCom callbacks in, answers out through ``message/send`` of a fake WeCom (its own
   process) that counts them. Turns/s = answers / (last answer - first callback). The load
   generator keeps at most ``--window`` turns unanswered (64: as many customers waiting as
   ``hub.max_concurrent_turns``), so the queue does not grow and the drain at the end is short;
   ``--window 512`` shows what a worker does with hundreds of conversations at once. WeCom's
   30 messages a minute per member (``wecom.user_rate_per_min``) is lifted, or it would pace
   the run. Each process's CPU over that window is printed so scaling per core can be read off,
   and what limits the rate on this machine.

Before every measurement a warm-up (``--warmup`` s) runs; each measurement lasts ``--seconds``;
``--repeat N`` repeats them and prints the median with the [min-max] range. ``--profile`` also
samples the gateway under WeCom load and the all-in-one process under /chat load with py-spy
(``pip install py-spy``) and prints the top self-time functions. ``--hub-root DIR`` runs the
hub from another tree (``git archive HEAD | tar -x -C DIR``: a commit, not a half-edited checkout).
The exit status is 1 when a process failed or an accepted turn went unanswered; the hub's
WARNING/ERROR log lines are summarized at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # this file lives in bench/, next to bench/engine.py: never shadow packages
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, deque  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

QUERIES = ["如何重置密码？", "发票怎么开", "退款多久到账", "快递到哪了", "会员有什么权益", "怎么注销账号"]
CORP_ID = "ww0123456789abcdef"
TOKEN = "benchToken"
AGENT_ID = 1000002
PARTITIONS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# --------------------------------------------------------------------------- servers this file runs itself
def serve_bare(port: int) -> None:
    """The baseline: read the body, return a constant (no parsing, no state, no I/O)."""
    from aiohttp import web

    chat_body = json.dumps({"answer": "ok", "source": "bare"}).encode()

    async def wecom(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="")

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=chat_body, content_type="application/json")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/wecom/callback", wecom)
    app.router.add_post("/chat", chat)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_fake_wecom(port: int) -> None:
    """WeCom's API as far as answers need it: gettoken, and message/send that counts what arrives."""
    from aiohttp import web

    stats = {"sends": 0, "last": 0.0, "bad": 0, "gettoken": 0}
    ok = json.dumps({"errcode": 0, "errmsg": "ok"}).encode()

    async def gettoken(_request: web.Request) -> web.Response:
        stats["gettoken"] += 1
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": "bench-token", "expires_in": 7200})

    async def send(request: web.Request) -> web.Response:
        data = await request.json()
        content = (data.get(data.get("msgtype", ""), {}) or {}).get("content")
        if request.query.get("access_token") != "bench-token" or not data.get("touser") or not content:
            stats["bad"] += 1
        stats["sends"] += 1
        stats["last"] = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process on the machine
        return web.Response(body=ok, content_type="application/json")

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/cgi-bin/gettoken", gettoken)
    app.router.add_post("/cgi-bin/message/send", send)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/healthz", get_stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --------------------------------------------------------------------------- a lean HTTP/1.1 client
class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time. Far cheaper per request than aiohttp's
    client, so on a 2-core machine the generator takes as little CPU from the servers as it can."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            total = end + 4 + int(head[i + 17 : j if j >= 0 else len(head)])
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
        elif b"\r\ntransfer-encoding: chunked" in head:
            parsed = _dechunk(buf, end + 4)
            if parsed is None:
                return
            body, total = parsed
        else:
            raise ValueError(f"response without a length: {head[:200]!r}")
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


async def connect(port: int) -> HttpConn:
    _, conn = await asyncio.get_running_loop().create_connection(HttpConn, "127.0.0.1", port)
    return conn


def http_post(port: int, path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def http_get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


# --------------------------------------------------------------------------- CPU accounting from /proc
def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (Redis, RabbitMQ), from /proc; None if not visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{parts[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class CpuMeter:
    """CPU seconds per process over a window, as cores (1.0 = one core busy all the time)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cores: dict[str, float] = {}
        self.machine = 0.0

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._m0 = machine_busy_s()
        self._c0 = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *_exc: object) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self.machine = (machine_busy_s() - self._m0) / elapsed
        for name, pid in self.pids.items():
            before, after = self._c0[name], proc_cpu_s(pid)
            if before is not None and after is not None:
                self.cores[name] = (after - before) / elapsed


# --------------------------------------------------------------------------- load
@dataclass
class Load:
    done: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    samples: list[bytes] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0

    @property
    def rps(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.done - self.statuses.get(200, 0)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


async def drive(port: int, next_request: Callable[[int], bytes], concurrency: int, seconds: float, *,
                gate: Callable[[], Awaitable[None]] | None = None, refused: Callable[[], None] | None = None,
                sample_every: int = 0) -> Load:
    """``concurrency`` keep-alive connections, each sending its next request when the last one is
    answered, until ``seconds`` have passed (requests in flight then are waited for and counted)."""
    conns = [await connect(port) for _ in range(concurrency)]
    out = Load()
    lat = out.latencies
    statuses = out.statuses
    perf = time.perf_counter
    stop = perf() + seconds

    async def client(c: int) -> None:
        conn = conns[c]
        n = 0
        while perf() < stop:
            if gate is not None:
                await gate()
            req = next_request(c)
            t0 = perf()
            try:
                status, body = await conn.request(req)
            except ConnectionError:
                status, body = 599, b""
                conn = conns[c] = await connect(port)
            lat.append(perf() - t0)
            statuses[status] += 1
            if status != 200 and refused is not None:
                refused()
            if sample_every and n % sample_every == 0:
                out.samples.append(body)
            n += 1

    t0 = perf()
    try:
        await asyncio.gather(*(client(c) for c in range(concurrency)))
    finally:
        out.seconds = perf() - t0
        for conn in conns:
            conn.close()
    out.done = len(lat)
    return out


async def measured(pids: dict[str, int], run: Callable[[], Awaitable[Load]]) -> Load:
    with CpuMeter(pids) as meter:
        result = await run()
    result.cpu, result.machine = meter.cores, meter.machine
    return result


# --------------------------------------------------------------------------- WeCom callbacks
class WecomCallbacks:
    """Signed, encrypted app callbacks exactly as WeCom sends them (wechatpy's PrpCrypto and the
    documented SHA1 signature, as tests/adapters/wecom/fake_wecom.py ``Sender.app_post``), each with a
    new MsgId. Built ahead of a measurement so the generator does not spend the window encrypting."""

    def __init__(self, port: int, aes_key: str, users: int) -> None:
        from wechatpy.enterprise.crypto import PrpCrypto

        self.port = port
        self.crypto = PrpCrypto(base64.b64decode(aes_key + "="))
        self.users = users
        self.seq = 0
        self.run = uuid.uuid4().hex[:8]
        self.pool: deque[bytes] = deque()
        self.late = 0  # built inside a window because the pool ran dry

    def build(self) -> bytes:
        n = self.seq
        self.seq += 1
        user = f"u{n % self.users}"
        xml = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
               f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
               f"<Content><![CDATA[{QUERIES[n % len(QUERIES)]}]]></Content><MsgId>{self.run}{n:012d}</MsgId>"
               f"<AgentID>{AGENT_ID}</AgentID></xml>")
        encrypt = self.crypto.encrypt(xml, CORP_ID).decode()
        ts, nonce = str(int(time.time())), secrets.token_hex(6)
        signature = hashlib.sha1("".join(sorted([TOKEN, ts, nonce, encrypt])).encode()).hexdigest()
        body = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
                f"<AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>").encode()
        path = f"/wecom/callback?msg_signature={signature}&timestamp={ts}&nonce={nonce}"
        return http_post(self.port, path, body, "text/xml")

    def fill(self, count: int) -> None:
        self.pool.clear()
        self.late = 0
        for _ in range(count):
            self.pool.append(self.build())

    def next(self, _conn: int) -> bytes:
        if self.pool:
            return self.pool.popleft()
        self.late += 1
        return self.build()


def pool_size(rate: float, seconds: float, extra: int = 500) -> int:
    return int(rate * seconds * 1.5) + extra


# --------------------------------------------------------------------------- processes
class Proc:
    def __init__(self, name: str, args: Sequence[str], port: int, log_dir: Path, env: dict[str, str] | None = None,
                 ready_path: str = "/readyz", root: Path = ROOT) -> None:
        self.name, self.args, self.port, self.ready_path, self.root = name, list(args), port, ready_path, root
        self.env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    async def ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                conn = await connect(self.port)
                try:
                    status, _ = await asyncio.wait_for(conn.request(http_get(self.port, self.ready_path)), 3)
                finally:
                    conn.close()
                if status == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout_s:.0f} s; log tail:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def problems(self) -> str:
        """WARNING / ERROR lines of this process's log, counted, with the first of each kind."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        first: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for line in lines:
            parts = line.split(" ", 4)
            if len(parts) == 5 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                kind = f"{parts[2]} {parts[3]}"
                counts[kind] += 1
                first.setdefault(kind, line)
        if not counts:
            return ""
        return "\n".join(f"      {n} x {kind} first: {first[kind][:300]}" for kind, n in counts.most_common())

    def stop(self) -> None:
        stop_all([self])


def stop_all(procs: Sequence[Proc], timeout_s: float = 20) -> list[Proc]:
    """SIGTERM to every process at once (as an orchestrator stops a deployment), then wait; those still
    running after ``timeout_s`` are killed and returned."""
    running = [p for p in procs if p.proc is not None and p.proc.poll() is None]
    for p in running:
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    killed = []
    for p in running:
        assert p.proc is not None
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(10)
            killed.append(p)
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_proc(name: str, role: str, log_dir: Path, env: dict[str, str], root: Path) -> Proc:
    port = free_port()
    ports = {"BOT__SERVER__PORT": str(port), "BOT__SERVER__WORKER_PORT": str(port)}
    return Proc(name, [sys.executable, "-m", "bot", "serve", "--role", role], port, log_dir, {**env, **ports},
                root=root)


def self_proc(name: str, mode: str, log_dir: Path) -> Proc:
    port = free_port()
    return Proc(name, [sys.executable, str(Path(__file__).resolve()), mode, str(port)], port, log_dir,
                ready_path="/healthz")


async def start_all(procs: Sequence[Proc]) -> None:
    for p in procs:
        p.start()
    await asyncio.gather(*(p.ready() for p in procs))


# --------------------------------------------------------------------------- fake WeCom's counter
class SendCounter:
    """Polls the fake WeCom's /stats every 10 ms; ``tick()`` waits for the next poll."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sends = 0
        self.last = 0.0
        self.bad = 0
        self._tick: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SendCounter:
        self.conn = await connect(self.port)
        await self.poll()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.conn.close()

    async def poll(self) -> None:
        _, body = await self.conn.request(http_get(self.port, "/stats"))
        data = json.loads(body)
        self.sends, self.last, self.bad = data["sends"], data["last"], data["bad"]

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            try:
                await self.poll()
            except (OSError, ValueError, KeyError):
                with contextlib.suppress(OSError):
                    self.conn.close()
                    self.conn = await connect(self.port)
            tick, self._tick = self._tick, None
            if tick is not None and not tick.done():
                tick.set_result(None)

    async def tick(self) -> None:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):  # a poll that failed must not hang the caller
            await asyncio.wait_for(asyncio.shield(self._tick), 0.5)


@dataclass
class Turns:
    load: Load
    answered: int
    expected: int
    window_s: float
    bad: int

    @property
    def tps(self) -> float:
        return self.answered / self.window_s if self.window_s > 0 else 0.0


async def turns(gw_port: int, counter: SendCounter, callbacks: WecomCallbacks, args: argparse.Namespace,
                seconds: float, pids: dict[str, int]) -> Turns:
    """Callbacks for ``seconds`` with at most ``args.window`` unanswered, then wait for the last answer."""
    await counter.tick()
    base, bad0 = counter.sends, counter.bad
    started = 0

    async def gate() -> None:
        nonlocal started
        while started - (counter.sends - base) >= args.window:
            await counter.tick()
        started += 1

    def refused() -> None:  # a 503 is not answered; WeCom would retry it
        nonlocal started
        started -= 1

    with CpuMeter(pids) as meter:
        t_first = time.monotonic()
        load = await drive(gw_port, callbacks.next, args.concurrency, seconds, gate=gate, refused=refused)
        expected = load.statuses.get(200, 0)
        deadline = time.monotonic() + 30
        while counter.sends - base < expected and time.monotonic() < deadline:
            await counter.tick()
    load.cpu, load.machine = meter.cores, meter.machine
    answered = counter.sends - base
    return Turns(load, answered, expected, max(counter.last - t_first, 1e-9), counter.bad - bad0)


# --------------------------------------------------------------------------- RabbitMQ and Redis housekeeping
def queue_names(name: str) -> list[str]:
    return [f"{name}.p{i:03d}" for i in range(PARTITIONS)]


async def purge_queues(url: str, name: str) -> int:
    import aio_pika

    purged = 0
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for q in queue_names(name):
            with contextlib.suppress(Exception):
                queue = await channel.get_queue(q, ensure=True)
                result = await queue.purge()
                purged += result.message_count or 0
    return purged


async def delete_rabbit(url: str, name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        for kind, names in (("queue", [*queue_names(name), f"{name}.dead"]),
                            ("exchange", [f"{name}.in", f"{name}.dead", f"{name}.replies"])):
            for n in names:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(n)
                    else:
                        await channel.exchange_delete(n)
                except Exception:  # not declared in this run
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()


async def delete_keys(url: str, prefixes: Sequence[str]) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    deleted = 0
    try:
        for prefix in prefixes:
            keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for i in range(0, len(keys), 1000):
                deleted += await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()
    return deleted


LEASE_KEYS = """
import inspect, json, sys
from bot.state.keys import Keys
keys, queue, n = Keys(sys.argv[1]), sys.argv[2], int(sys.argv[3])
two = len(inspect.signature(keys.queue_lease).parameters) == 2  # (queue, partition) or (partition)
print(json.dumps([keys.queue_lease(queue, i) if two else keys.queue_lease(i) for i in range(n)]))
"""


def lease_keys(root: Path, prefix: str, queue: str) -> list[str]:
    """The hub's own names for the partition leases (bot/state/keys.py builds every key), from the hub's tree."""
    out = subprocess.run([sys.executable, "-c", LEASE_KEYS, prefix, queue, str(PARTITIONS)], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


async def wait_balanced(redis_url: str, keys: list[str], workers: int, timeout_s: float = 20) -> str:
    """Until every partition's lease is held and the workers hold equal shares."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            owners = await client.mget(keys)
            counts = Counter(o for o in owners if o)
            share = sorted(counts.values())
            if None not in owners and len(counts) == workers and share[-1] - share[0] <= 1:
                return "/".join(str(c) for c in share)
            if time.monotonic() > deadline:
                return f"NOT balanced after {timeout_s:.0f} s: {sorted(counts.values())}, {owners.count(None)} unowned"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- profiles
def py_spy() -> str | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return spy if Path(spy).exists() else None


async def profile(pid: int, seconds: float, out: Path, load: Callable[[], Awaitable[Load]]) -> str:
    spy = py_spy()
    if spy is None:
        return "py-spy not installed (.venv/bin/pip install py-spy); no profile"
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "--function",
        "-o", str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await asyncio.sleep(0.5)  # py-spy attaches
    await load()
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        return f"py-spy failed ({proc.returncode}): {output.decode(errors='replace')[-800:]}"
    return top_self(out, seconds)


def top_self(path: Path, seconds: float, n: int = 10) -> str:
    if not path.exists():
        return f"py-spy wrote no {path}"
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # the project's own functions, with everything they call
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            leaf[frames[-1]] += int(count)
            for frame in set(frames):
                if (" (bot/" in frame or " (adapters/" in frame or " (engine/" in frame) and "__main__" not in frame:
                    inclusive[frame] += int(count)
    total = sum(leaf.values())
    if not total:
        return "no samples"
    lines = [f"  {total} busy samples of ~{int(seconds * 100)} (100 Hz, idle waits not counted); "
             f"self time, C calls counted in their Python caller; raw stacks: {path}",
             f"  {'self %':>7} {'samples':>8}  function (file:first line)"]
    for frame, count in leaf.most_common(n):
        lines.append(f"  {100 * count / total:>6.1f}% {count:>8}  {frame}")
    packages: Counter[str] = Counter()
    for frame, count in leaf.items():
        where = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
        packages[where.split("/")[0].removesuffix(".py") if "/" in where else where.removesuffix(".py")] += count
    lines.append("  self time by package: " + ", ".join(f"{name} {100 * c / total:.0f}%"
                                                         for name, c in packages.most_common(12)))
    lines.append("  the hub's own functions, inclusive (with what they call): "
                 + ", ".join(f"{frame} {100 * c / total:.0f}%" for frame, c in inclusive.most_common(10)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- printing
def rng(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    return f"{mid} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def cpu_cols(runs: Sequence[Load], names: Sequence[str]) -> str:
    cols = []
    for name in names:
        vals = [r.cpu[name] for r in runs if name in r.cpu]
        cols.append(f"{name} {statistics.median(vals):.2f}" if vals else f"{name} n/a")
    cols.append(f"machine {statistics.median([r.machine for r in runs]):.2f}/{NCPU}")
    return ", ".join(cols)


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    """Columns as wide as their widest cell; the first one left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print(indent + "  ".join(cells))


def table(title: str, rows: list[tuple[str, list[Load]]], base: list[Load], cpu_names: dict[str, list[str]]) -> None:
    print(title)
    cells = []
    for name, runs in rows:
        ratios = [r.rps / b.rps for r, b in zip(runs, base, strict=True) if b.rps]
        cells.append([name, rng([r.rps for r in runs], ".0f"), rng([r.pct(50) for r in runs], ".2f"),
                      rng([r.pct(99) for r in runs], ".2f"), str(sum(r.errors for r in runs)),
                      rng(ratios, ".2f") + "x"])
    grid(["server", "req/s", "p50 ms", "p99 ms", "errors", "vs bare"], cells)
    for name, runs in rows:
        print(f"    CPU (cores) during {name}: {cpu_cols(runs, cpu_names[name])}")
    for name, runs in rows:
        bad: Counter[int] = Counter()
        for r in runs:
            bad.update({s: c for s, c in r.statuses.items() if s != 200})
        if bad:
            print(f"    {name}: non-200 answers {dict(bad)}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def limit_line(t: Turns) -> str:
    cpu = t.load.cpu
    tracked = sum(cpu.values())
    hub = {k: v for k, v in cpu.items() if k == "gateway" or k.startswith("worker")}
    busiest = max(hub.items(), key=lambda kv: kv[1]) if hub else ("?", 0.0)
    worker_cores = sum(v for k, v in hub.items() if k.startswith("worker"))
    serving = sum(v for k, v in cpu.items() if k != "loadgen" and k != "fake-wecom")
    tps = max(t.tps, 1e-9)
    parts = [f"machine {t.load.machine:.2f} of {NCPU} cores busy ({tracked:.2f} in the processes listed, "
             f"{max(0.0, t.load.machine - tracked):.2f} elsewhere)"]
    if t.load.machine >= 0.85 * NCPU:
        parts.append(f"CPU-bound: the cores are full, the largest hub share is {busiest[0]} ({busiest[1]:.2f})")
    elif busiest[1] >= 0.9:
        parts.append(f"{busiest[0]} saturates its one core (one Python event loop)")
    else:
        parts.append("no core saturated: waiting on round trips (Redis, confirms, message/send) or the window")
    if worker_cores:
        parts.append(f"{worker_cores * 1000 / tps:.2f} ms worker CPU per turn ({t.tps / worker_cores:.0f} turns/s "
                     f"per worker core)")
    parts.append(f"{serving * 1000 / tps:.2f} ms CPU per turn in gateway + workers + Redis + RabbitMQ, so "
                 f"~{NCPU * 1000 / (serving * 1000 / tps):.0f} turns/s at most on {NCPU} cores with nothing else")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the floor
@dataclass
class Floor:
    redis_us: float  # client CPU of one redis-py round trip (SET NX EX), 64 at once
    publish_us: float  # client CPU of one aio-pika publish with a publisher confirm, persistent, quorum queue

    def gateway_us(self) -> float:
        """What a callback costs the gateway in client libraries alone: the provisional dedup mark, its
        confirmation, and the publish (bot/inbox/rabbit.py put_once)."""
        return 2 * self.redis_us + self.publish_us


async def measure_floor(redis_url: str, amqp_url: str, name: str, n: int = 6000) -> Floor:
    """The cost of the client libraries themselves, in this process before any server is loaded: with it the
    highest ratio any gateway built on them can reach is read off next to the measured one."""
    import aio_pika
    import redis.asyncio as aioredis

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def per_op(op: Callable[[int], Awaitable[object]], total: int) -> float:
        async def task(t: int) -> None:
            for j in range(total // 64):
                await op(t * total + j)
        for t in range(64):  # warm-up: connections opened, code paths hot
            await op(-1 - t)
        before = cpu()
        await asyncio.gather(*(task(t) for t in range(64)))
        return (cpu() - before) / (64 * (total // 64)) * 1e6

    client = aioredis.Redis.from_url(redis_url)
    try:
        redis_us = await per_op(lambda i: client.set(f"{name}:floor:{i}", "1", ex=60, nx=True), n)
    finally:
        await delete_keys(redis_url, [f"{name}:floor"])
        await client.aclose()
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue(f"{name}.floor", durable=True, arguments={"x-queue-type": "quorum"})
        body = b"x" * 400  # about an encoded event
        publish_us = await per_op(lambda _i: channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue.name), n // 2)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    return Floor(redis_us, publish_us)


def floor_line(floor: Floor, bare: Sequence[Load]) -> str:
    bare_us = statistics.median([r.cpu["bare"] / r.rps * 1e6 for r in bare if r.rps and "bare" in r.cpu])
    most = bare_us / (bare_us + floor.gateway_us())
    return (f"  floor: one redis-py round trip {floor.redis_us:.0f} us of client CPU, one aio-pika publish with "
            f"confirm {floor.publish_us:.0f} us (measured in the load generator before the run); a callback needs "
            f"2 round trips and 1 publish = {floor.gateway_us():.0f} us, the bare handler {bare_us:.0f} us a request: "
            f"a one-process gateway on these libraries reaches at most {most:.2f}x before any verification, "
            f"decryption or routing of its own")


# --------------------------------------------------------------------------- the run
async def bench(args: argparse.Namespace) -> int:
    scenarios = {int(s) for s in args.only.split(",")}
    log_dir = Path(tempfile.mkdtemp(prefix="kefu-bench-"))
    run_id = uuid.uuid4().hex[:8]
    qname, prefix, chat_prefix = f"kefubench-{run_id}", f"kefubench-{run_id}", f"kefubench-{run_id}-chat"
    aes = base64.b64encode(os.urandom(32)).decode()[:-1]
    redis_port = urllib.parse.urlparse(args.redis).port or 6379
    amqp_port = urllib.parse.urlparse(args.amqp).port or 5672
    services = {name: pid for name, pid in (("redis", listener_pid(redis_port)), ("rabbitmq", listener_pid(amqp_port)))
                if pid is not None}
    me = {"loadgen": os.getpid()}

    bare = self_proc("bare", "--serve-bare", log_dir)
    fake = self_proc("fake-wecom", "--serve-fake-wecom", log_dir)
    common = {"BOT__STATE__URL": args.redis, "BOT__WEB__SESSION_SECRET": secrets.token_hex(16),
              "BOT__LOGGING__LEVEL": args.log_level}
    wecom = {"BOT__WECOM__CORP_ID": CORP_ID, "BOT__WECOM__TOKEN": TOKEN, "BOT__WECOM__AES_KEY": aes,
             "BOT__WECOM__SECRET": "bench-secret", "BOT__WECOM__AGENT_ID": str(AGENT_ID),
             "BOT__WECOM__API_BASE": f"http://127.0.0.1:{fake.port}",
             "BOT__WECOM__USER_RATE_PER_MIN": "1000000"}  # WeCom's 30/min per member would pace the bench
    queued = {**common, **wecom, "BOT__STATE__KEY_PREFIX": prefix, "BOT__QUEUE__URL": args.amqp,
              "BOT__QUEUE__NAME": qname, "BOT__QUEUE__PARTITIONS": str(PARTITIONS), "BOT__QUEUE__LEASE_S": "2"}
    gateway = hub_proc("gateway", "gateway", log_dir, queued, args.hub_root)
    allin = hub_proc("all-in-one", "all", log_dir, {**common, "BOT__STATE__KEY_PREFIX": chat_prefix,
                                                     "BOT__API__RATE_PER_CLIENT_PER_MIN": "100000000"},  # one address
                     args.hub_root)
    workers: list[Proc] = []
    procs: list[Proc] = [bare, fake]
    if scenarios & {1, 3}:
        procs.append(gateway)
    if 2 in scenarios:
        procs.append(allin)
    failed = False
    reported = ""
    t_start = time.monotonic()
    print(f"kefu-hub bench of {args.hub_root}: {NCPU} cores, Python {sys.version.split()[0]}, "
          f"load average before start {loadavg()}; "
          f"{args.concurrency} keep-alive connections from one load-generator process; warm-up {args.warmup:g} s, "
          f"{args.seconds:g} s per measurement, {args.repeat} repeat(s); CPU in cores (1.00 = one core all the time); "
          f"redis {'pid ' + str(services['redis']) if 'redis' in services else 'not visible'}, rabbitmq "
          f"{'pid ' + str(services['rabbitmq']) if 'rabbitmq' in services else 'not visible'} (shared servers: "
          f"their CPU includes anyone else's use)")
    try:
        floor = await measure_floor(args.redis, args.amqp, qname) if 1 in scenarios else None
        t0 = time.monotonic()
        await start_all(procs)
        print(f"started {', '.join(p.name for p in procs)} in {time.monotonic() - t0:.1f} s (logs in {log_dir})\n")

        callbacks = WecomCallbacks(gateway.port, aes, users=1000)
        bare_wecom = WecomCallbacks(bare.port, aes, users=1000)
        bare_wecom.fill(2000)
        bare_cycle = itertools.cycle(list(bare_wecom.pool))

        def bare_wecom_req(_conn: int) -> bytes:
            return next(bare_cycle)

        if 1 in scenarios:
            bare_runs, gw_runs = [], []
            gw_pids = {"gateway": gateway.pid, **services, **me}
            bare_pids = {"bare": bare.pid, **services, **me}
            for _ in range(args.repeat):
                await drive(bare.port, bare_wecom_req, args.concurrency, args.warmup)
                bare_runs.append(await measured(bare_pids, lambda: drive(bare.port, bare_wecom_req, args.concurrency,
                                                                         args.seconds)))
                callbacks.fill(pool_size(1500, args.warmup))
                warm = await drive(gateway.port, callbacks.next, args.concurrency, args.warmup)
                callbacks.fill(pool_size(warm.rps, args.seconds))
                gw_runs.append(await measured(gw_pids, lambda: drive(gateway.port, callbacks.next, args.concurrency,
                                                                     args.seconds)))
                if callbacks.late:
                    print(f"  (pool ran dry: {callbacks.late} callbacks were encrypted inside the window)")
            table("1. WeCom app callbacks -> gateway alone (verify, decrypt, dedup in Redis, publish + confirm, 200); "
                  "no worker: events wait in RabbitMQ",
                  [("bare aiohttp (read body, constant)", bare_runs), ("gateway", gw_runs)], bare_runs,
                  {"bare aiohttp (read body, constant)": ["bare", *services, "loadgen"],
                   "gateway": ["gateway", *services, "loadgen"]})
            ratio = statistics.median([g.rps / b.rps for g, b in zip(gw_runs, bare_runs, strict=True)])
            print(f"  target gateway >= 0.5x bare: {verdict(ratio >= 0.5)} ({ratio:.2f}x)")
            if floor is not None:
                print(floor_line(floor, bare_runs))
            print()
            if args.profile:
                callbacks.fill(pool_size(statistics.median([r.rps for r in gw_runs]), args.seconds + 1))
                print("  profile: gateway under WeCom callbacks (py-spy)")
                print(await profile(gateway.pid, args.seconds, log_dir / "gateway.pyspy.txt",
                                    lambda: drive(gateway.port, callbacks.next, args.concurrency, args.seconds + 1)))
                print()

        if 2 in scenarios:
            def chat_req(port: int) -> Callable[[int], bytes]:
                bodies = [[http_post(port, "/chat", json.dumps({"query": q, "user_id": f"bench-{run_id}-{c}"},
                                                               ensure_ascii=False).encode(), "application/json")
                           for q in QUERIES] for c in range(args.concurrency)]
                turn = [0] * args.concurrency

                def nxt(c: int) -> bytes:
                    turn[c] += 1
                    return bodies[c][turn[c] % len(QUERIES)]

                return nxt

            bare_chat, hub_chat = chat_req(bare.port), chat_req(allin.port)
            bare_runs, hub_runs = [], []
            for _ in range(args.repeat):
                await drive(bare.port, bare_chat, args.concurrency, args.warmup)
                bare_runs.append(await measured({"bare": bare.pid, **services, **me},
                                                lambda: drive(bare.port, bare_chat, args.concurrency, args.seconds)))
                await drive(allin.port, hub_chat, args.concurrency, args.warmup)
                hub_runs.append(await measured({"all-in-one": allin.pid, **services, **me},
                                               lambda: drive(allin.port, hub_chat, args.concurrency, args.seconds,
                                                             sample_every=25)))
            sources: Counter[str] = Counter()
            for r in hub_runs:
                for body in r.samples:
                    try:
                        sources[str(json.loads(body).get("source"))] += 1
                    except ValueError:
                        sources["unreadable"] += 1
            table(f"2. POST /chat FAQ turns -> whole hub in one process (--role all, state in Redis, in-process "
                  f"queue, engine faq, dialogue on), {args.concurrency} conversations (one user_id per connection)",
                  [("bare aiohttp (read body, constant)", bare_runs), ("hub --role all", hub_runs)], bare_runs,
                  {"bare aiohttp (read body, constant)": ["bare", *services, "loadgen"],
                   "hub --role all": ["all-in-one", *services, "loadgen"]})
            total = sum(sources.values()) or 1
            print("    answer sources (sampled): " + ", ".join(f"{k} {100 * v / total:.0f}%"
                                                           for k, v in sources.most_common()))
            ratio = statistics.median([h.rps / b.rps for h, b in zip(hub_runs, bare_runs, strict=True)])
            p99 = statistics.median([h.pct(99) for h in hub_runs])
            print(f"  target hub >= 0.25x bare: {verdict(ratio >= 0.25)} ({ratio:.2f}x); "
                  f"target p99 <= 20 ms: {verdict(p99 <= 20)} ({p99:.1f} ms)\n")
            if args.profile:
                print("  profile: all-in-one under /chat (py-spy)")
                print(await profile(allin.pid, args.seconds, log_dir / "all-in-one.pyspy.txt",
                                    lambda: drive(allin.port, hub_chat, args.concurrency, args.seconds + 1)))
                print()
            allin.stop()

        if 3 in scenarios:
            purged = await purge_queues(args.amqp, qname)
            print(f"3. Answered turns/s: WeCom callbacks -> gateway -> RabbitMQ ({PARTITIONS} partitions) -> N workers "
                  f"(FAQ, dialogue on, state in Redis) -> message/send on the fake WeCom; at most {args.window} "
                  f"unanswered; {purged} events left by scenario 1 purged first")
            results: list[tuple[int, list[Turns], str]] = []
            leases = await asyncio.to_thread(lease_keys, args.hub_root, prefix, qname)
            async with SendCounter(fake.port) as counter:
                for n in args.workers:
                    while len(workers) < n:
                        w = hub_proc(f"worker-{len(workers) + 1}", "worker", log_dir, queued, args.hub_root)
                        workers.append(w)
                        await start_all([w])
                    share = await wait_balanced(args.redis, leases, n)
                    pids = {"gateway": gateway.pid, **{w.name: w.pid for w in workers}, "fake-wecom": fake.pid,
                            **services, **me}
                    runs = []
                    for _ in range(args.repeat):
                        callbacks.fill(pool_size(800 * n, args.warmup))
                        warm = await turns(gateway.port, counter, callbacks, args, args.warmup, pids)
                        callbacks.fill(pool_size(warm.tps, args.seconds, extra=args.window + 500))
                        runs.append(await turns(gateway.port, counter, callbacks, args, args.seconds, pids))
                    results.append((n, runs, share))
            cells = []
            for n, runs, share in results:
                cells.append([str(n), rng([r.tps for r in runs], ".0f"),
                              f"{sum(r.answered for r in runs)}/{sum(r.expected for r in runs)}",
                              rng([r.load.pct(50) for r in runs], ".2f"), rng([r.load.pct(99) for r in runs], ".2f"),
                              share])
            grid(["workers", "turns/s", "answered/accepted", "callback p50 ms", "callback p99 ms",
                  "partitions per worker"], cells)
            for n, runs, _ in results:
                names = ["gateway", *(f"worker-{i + 1}" for i in range(n)), "fake-wecom", *services, "loadgen"]
                print(f"    CPU (cores) with {n} worker(s): {cpu_cols([r.load for r in runs], names)}")
                last = runs[-1]
                print(f"    limit with {n} worker(s): {limit_line(last)}")
                bad = sum(r.bad for r in runs)
                refused = sum(r.load.errors for r in runs)
                if bad or refused or any(r.answered != r.expected for r in runs):
                    failed = True
                    print(f"    PROBLEM: {refused} callbacks refused, {bad} malformed sends, answered "
                          f"{[r.answered for r in runs]} of {[r.expected for r in runs]}")
            if len(results) >= 2:
                one = statistics.median([r.tps for r in results[0][1]])
                two = statistics.median([r.tps for r in results[-1][1]])
                print(f"  scaling {results[0][0]} -> {results[-1][0]} workers: {two / one:.2f}x turns/s "
                      f"(on {NCPU} cores shared with the gateway, Redis, RabbitMQ and the load generator)")
            print()
    except RuntimeError as exc:
        failed = True
        reported = str(exc)
        print(f"FAILED: {exc}")
    finally:
        for p in stop_all([*workers, *procs]):
            failed = True
            print(f"{p.name} did not exit within 20 s of SIGTERM and was killed; log tail:\n{p.tail(10)}")
            reported += f" {p.name} exited"
        for p in [*workers, *procs]:
            if report := p.problems():
                print(f"{p.name} logged problems:\n{report}")
        for p in [*workers, *procs]:
            if p.proc is not None and p.proc.returncode not in (0, None, -signal.SIGTERM) \
                    and f"{p.name} exited" not in reported:
                failed = True
                print(f"{p.name} exited with {p.proc.returncode}; log tail:\n{p.tail()}")
        with contextlib.suppress(Exception):
            await delete_rabbit(args.amqp, qname)
        keys = 0
        with contextlib.suppress(Exception):
            keys = await delete_keys(args.redis, [prefix, chat_prefix])
        print(f"cleaned up: queues/exchanges {qname}.*, {keys} Redis keys {prefix}:* / {chat_prefix}:*; "
              f"total {time.monotonic() - t_start:.0f} s")
        if args.profile or failed:
            print(f"logs{' and profiles' if args.profile else ''} kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-fake-wecom":
        serve_fake_wecom(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up before each measurement")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement; ranges are printed")
    ap.add_argument("--concurrency", type=int, default=64, help="keep-alive connections (/chat: conversations)")
    ap.add_argument("--window", type=int, default=64,
                    help="scenario 3: most turns unanswered at once (= conversations a worker holds at most)")
    ap.add_argument("--workers", default="1,2", help="scenario 3: worker counts, in increasing order")
    ap.add_argument("--only", default="1,2,3", help="scenarios to run, e.g. 1,3")
    ap.add_argument("--profile", action="store_true", help="py-spy the gateway and the all-in-one process")
    ap.add_argument("--log-level", default="INFO", help="hub processes' logging.level")
    ap.add_argument("--hub-root", type=Path, default=ROOT,
                    help="checkout whose `python -m bot` runs (default: this one), e.g. a `git archive` export")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    ap.add_argument("--amqp", default=os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672/")
    args = ap.parse_args()
    args.workers = sorted(int(w) for w in args.workers.split(","))
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
