"""Hub overhead: POST /chat through the whole hub (dedup, mailbox, dialogue
state, dialogue graph, metrics) versus a bare aiohttp handler answering the same
FAQ lookup, measured side by side in one run, each server in its own process.

    .venv/bin/python bench/hub.py [--seconds 5] [--concurrency 32] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ["如何重置密码？", "发票怎么开", "退款多久到账", "快递到哪了", "会员有什么权益", "怎么注销账号"]

BARE = """
import sys
from aiohttp import web
from bot.faq import FaqIndex
index = FaqIndex.load("config/faq.yaml", 0.35)
async def chat(request):
    data = await request.json()
    hit = index.best(data["query"])
    return web.json_response({"answer": hit.entry.answer if hit else ""})
app = web.Application()
app.router.add_post("/chat", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.post(url, json={"query": "你好"}) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, seconds: float, concurrency: int, multi_turn: bool) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < stop:
            body = {"query": QUERIES[i % len(QUERIES)]}
            if multi_turn:
                body["user_id"] = f"bench-{w}"
            t0 = time.perf_counter()
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)
            i += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, session) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return len(latencies) / elapsed, latencies, errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--redis", default="", help="also run the hub with state in this Redis")
    args = ap.parse_args()

    env = dict(os.environ, BOT__LOGGING__LEVEL="WARNING", PYTHONPATH=str(ROOT))
    runs: list[tuple[str, list[str], dict[str, str], bool]] = []
    bare_port = free_port()
    runs.append(("bare aiohttp + FAQ lookup", [sys.executable, "-c", BARE, str(bare_port)], env, False))
    hub_port = free_port()
    runs.append(("hub, memory state", [sys.executable, "-m", "bot", "serve"],
                 dict(env, BOT__SERVER__PORT=str(hub_port)), True))
    if args.redis:
        redis_port = free_port()
        runs.append(("hub, Redis state", [sys.executable, "-m", "bot", "serve"],
                     dict(env, BOT__SERVER__PORT=str(redis_port), BOT__STATE__URL=args.redis,
                          BOT__STATE__KEY_PREFIX=f"bench{redis_port}"), True))
    results = []
    for name, cmd, run_env, multi in runs:
        port = int(run_env.get("BOT__SERVER__PORT", bare_port))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=subprocess.DEVNULL)  # noqa: ASYNC220 - bench
        try:
            url = f"http://127.0.0.1:{port}/chat"
            await wait_up(url)
            await load(url, 1.0, args.concurrency, multi)  # warm-up
            rps, lat, errors = await load(url, args.seconds, args.concurrency, multi)
            results.append((name, rps, pct(lat, 50), pct(lat, 99), errors))
        finally:
            proc.terminate()
            proc.wait()
    base = results[0][1]
    print(f"POST /chat, {args.concurrency} concurrent clients, {args.seconds:.0f} s each, same machine")
    print(f"{'server':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs bare':>9}")
    for name, rps, p50, p99, errors in results:
        print(f"{name:<28}{rps:>9.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{rps / base:>9.2f}")


if __name__ == "__main__":
    asyncio.run(main())
