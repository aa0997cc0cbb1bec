"""Everything a running hub holds, built once from the config and passed in."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import aiohttp

from bot.ab.step import AbExperiment
from bot.answer import Answerer
from bot.config import Config, ConfigError
from bot.console.board import Board, open_board
from bot.console.desk import AgentDesk
from bot.console.feed import ConsoleFeed, open_feed
from bot.faq import FaqIndex
from bot.faq.curation import FaqCuration
from bot.faq.rerank import open_reranking
from bot.hub import Hub
from bot.inbox import Inbox
from bot.metrics import Metrics
from bot.notify import Notifier
from bot.outbound import http_timeout
from bot.pipeline import Dialogue, Step
from bot.privacy import pii
from bot.replybus import LocalBus, RabbitBus, ReplyBus
from bot.state import StateStore, open_store
from bot.state.keys import Keys
from bot.state.kv import MemoryKV, RedisKV, SharedKV
from bot.state.redisconn import open_blocking_client, require_supported
from bot.turn import TurnHandler
from engine.base import Engine, EngineError
from engine.factory import open_engine

if TYPE_CHECKING:
    from bot.archive.writer import ArchiveWriter
    from bot.safety.output_filter import OutputFilter

log = logging.getLogger(__name__)


Role = Literal["gateway", "worker", "all"]


class Services:
    def __init__(self, config: Config, metrics: Metrics | None = None, role: Role = "all") -> None:
        self.config = config
        self.role: Role = role
        self.metrics = metrics or Metrics()
        # one redaction policy per process: stored history, logs and stores all redact the same way
        pii.configure(pii.Redactor.from_config(config.privacy))
        self.keys = Keys(config.state.key_prefix)
        self.store: StateStore = open_store(config.state)
        client = getattr(self.store, "client", None)
        self.redis = client  # the shared redis.asyncio client when state lives in Redis
        # Blocking reads (the widget's XREAD) on a pool of their own, so they never take the shared pool's
        # connections that dedup, state and rate counters need (bot/state/redisconn.py).
        self.redis_blocking = None if client is None else open_blocking_client(
            config.state.url, socket_timeout_s=config.state.socket_timeout_s,
            connect_timeout_s=config.state.connect_timeout_s)
        self.kv: SharedKV = RedisKV(client) if client is not None else MemoryKV()
        self.faq = FaqIndex.from_config(config.faq, config.resolve_path,
                                        reranking=open_reranking(config.faq, config.resolve_path))
        self.engine: Engine | None = open_engine(config.engine, base_dir=config.resolve_path("."))
        self.answerer = Answerer(
            self.faq,
            self.engine,
            system_prompt=config.engine.system_prompt,
            deadline_s=config.hub.engine_deadline_s,
            metrics=self.metrics,
        )
        self.ab = AbExperiment.from_config(config.engine, self.metrics)  # the enabled A/B test (bot/ab/)
        self.bus: ReplyBus = RabbitBus(config.queue.url, config.queue.name) if config.queue.url else LocalBus()
        self.output_filter: OutputFilter | None = None  # set by _deciding; FAQ curation replaces its operator texts
        handler = self._handler()
        self.hub = Hub(config.hub, self.store, handler, self.metrics, inbox=self._inbox(),
                       origin=self.bus.origin, shares=self.pending_shares, steps=self._steps(handler))
        self.notifiers: list[Notifier] = []  # filled by channels that can reach the team
        if self.ab is not None:  # before the archive: per-arm counters once the answer went out
            self.hub.pipeline.after.append(self.ab.after_turn)
        self.archive = self._archive()
        if self.archive is not None:  # every delivered turn and vote, after its answer went out
            self.hub.pipeline.after.append(self.archive.after_turn)
        # The agent console's inbox rows and live events (bot/console/), shared by every process through Redis;
        # the desk's hook keeps the rows current wherever turns run (it costs nothing on ordinary turns).
        self.board: Board = open_board(client, self.keys)
        self.feed: ConsoleFeed = open_feed(client, self.redis_blocking, self.keys)
        self.desk = AgentDesk(self)
        self.hub.pipeline.saved_async.append(self.desk.turn_saved)
        # FAQ curation from the console: its change log lives in the archive database (bot/faq/curation.py)
        self.curation: FaqCuration | None = FaqCuration(self) if self.archive is not None else None
        self._http: aiohttp.ClientSession | None = None

    @property
    def pending_shares(self) -> dict[str, float]:
        """The public channels' shares of ``hub.max_pending`` (each process counts its own)."""
        return {"api": self.config.api.pending_share, "web": self.config.web.pending_share}

    @property
    def takes_events(self) -> bool:
        """This process serves webhooks and holds customers' connections (a gateway)."""
        return self.role in ("gateway", "all")

    @property
    def answers_events(self) -> bool:
        """This process runs turns (a worker)."""
        return self.role in ("worker", "all")

    def _inbox(self) -> Inbox | None:
        if not self.config.queue.url:
            return None  # in-process: the hub answers what it accepts
        from bot.inbox.rabbit import RabbitInbox

        return RabbitInbox(self.config.queue, self.store, self.metrics, redis=self.redis, keys=self.keys,
                           worker_id=self.bus.origin, max_concurrent=self.config.hub.max_pending)

    def _steps(self, handler: TurnHandler) -> list[Step]:
        """The deciding part of every turn, on every channel: input filter, stream guard, dialogue,
        output filter (bot/safety/). ``safety.enabled: false`` leaves the dialogue alone. An enabled A/B test
        assigns the arm first (every turn of the user counts for it) and labels the replies last."""
        return self._with_ab(self._deciding(handler))

    def _with_ab(self, steps: list[Step]) -> list[Step]:
        if self.ab is None:
            return steps
        assign, tag = self.ab.steps()
        return [assign, *steps, tag]

    def _deciding(self, handler: TurnHandler) -> list[Step]:
        if not self.config.safety.enabled:
            return [Dialogue(handler)]
        from bot.safety.blocklist import BlocklistError
        from bot.safety.input_filter import InputFilter
        from bot.safety.output_filter import OutputFilter, internal_texts

        try:
            checks_in = InputFilter.from_config(self.config, self.metrics, notifier=getattr(handler, "notifier", None))
        except BlocklistError as exc:  # a missing or unreadable file too
            raise ConfigError(f"safety.blocklist_path: {exc}") from None
        checks_out = OutputFilter(
            self.config.safety.output, self.metrics, blocklist=checks_in.blocklist,
            internal=internal_texts(self.config.engine.system_prompt, getattr(handler, "graph", None)),
            operator_texts=[entry.answer for entry in self.faq.by_id.values()] + list(self.config.privacy.keep),
        )
        self.output_filter = checks_out
        return [checks_in, checks_out.stream_step(), Dialogue(handler), checks_out]

    def _archive(self) -> ArchiveWriter | None:
        """The conversation archive (bot/archive/); a database that is away is no reason not to serve."""
        if not self.config.archive.enabled:
            return None
        from bot.archive.db import ArchiveUrlError
        from bot.archive.writer import ArchiveWriter

        try:
            return ArchiveWriter(self.config.archive, self.metrics, self.config.resolve_path("."))
        except ArchiveUrlError as exc:
            raise ConfigError(str(exc)) from None

    def _handler(self) -> TurnHandler:
        if self.config.dialogue.enabled:  # a bad graph raises GraphError (a ConfigError) naming the node
            from bot.dialogue import build_manager

            return build_manager(self)
        from bot.responder import SimpleResponder

        return SimpleResponder(self.answerer, self.config.state.history_turns)

    @property
    def http(self) -> aiohttp.ClientSession:
        """Outbound HTTP for every channel (never a blocking client on the loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=http_timeout(self.config.server.outbound_timeout_s))
        return self._http

    async def start(self) -> None:
        """Open what this role needs; the queue and the bus reconnect by themselves later,
        but must answer once at start (a worker without its broker is not a worker). A Redis older than
        the commands we use is refused here (:class:`~bot.state.redisconn.RedisTooOld`)."""
        if self.redis is not None:
            await require_supported(self.redis)
        await self.hub.inbox.start()
        await self.bus.start()
        if self.archive is not None:
            await self.archive.start()
        await self.feed.start()
        if self.curation is not None:  # the curated FAQ before the first turn
            await self.curation.start()
        if self.engine is not None and self.answers_events:
            try:
                await self.engine.start()
            except EngineError as exc:
                log.error("engine %s failed to start (%s); answering from the FAQ until it is fixed",
                          self.engine.name, exc)
                self.metrics.engine_fallbacks.labels("load").inc()

    async def close(self) -> None:
        if self.curation is not None:
            await self.curation.close()
        await self.hub.close()
        await self.feed.close()  # after the hub: its last turns still publish; ends the console's live streams
        if self.archive is not None:  # after the hub: the turns it finished are archived too
            await self.archive.close()
        await self.bus.close()
        if self.engine is not None:
            await self.engine.close()
        if self._http is not None:
            await self._http.close()
        if self.redis_blocking is not None:
            await self.redis_blocking.aclose()
        await self.store.close()
