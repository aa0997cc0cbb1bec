"""/metrics carries what the dashboard plots: turn latency by step, queue depth, time to first token."""

from __future__ import annotations

import aiohttp

from tests.conftest import make_config, start_server
from tests.fakes.openai_server import FakeOpenAI


async def test_metrics_show_steps_queue_depth_and_time_to_first_token() -> None:
    async with FakeOpenAI() as llm:
        config = make_config({"engine.kind": "openai", "engine.openai.base_url": llm.base_url,
                              "dialogue.enabled": "false", "faq.threshold": "1"})
        server = await start_server(config)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(server.make_url("/chat"), json={"query": "这个订单什么时候到？"}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["source"] == "llm"
                async with http.get(server.make_url("/metrics")) as resp:
                    text = await resp.text()
        finally:
            await server.close()
    for step in ("load", "dialogue", "save", "deliver"):
        assert f'kefu_turn_step_seconds_count{{step="{step}"}} 1.0' in text
    assert 'kefu_queue_depth{queue="inbox"} 0.0' in text
    assert "kefu_engine_ttft_seconds_count 1.0" in text
    assert "kefu_queue_redeliveries_total 0.0" in text
