"""Checks made before the server listens, so an unsafe setup is refused instead of quietly served.

``POST /chat`` trusts the ``user_id`` it is given (it is meant for the operator's own backend). Without
``api.keys`` anyone who reaches the port can talk as any user, read that user's waiting agent replies
and spend the model's budget. On a loopback address (``make run``, a sidecar) that is a development
convenience and gets a loud warning; on any other address it is refused unless the operator says
``api.allow_anonymous: true`` on purpose.
"""

from __future__ import annotations

import ipaddress
import logging

from bot.config import Config, ConfigError

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``server.host``) only listens on this machine. Empty, ``0.0.0.0``, ``::`` and any
    name other than localhost listen (or may listen) further."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_open_api(cfg: Config, role: str) -> None:
    """Warn when ``/chat`` is open to anyone; raise :class:`ConfigError` (exit 2) when it would be open on a
    non-loopback address without ``api.allow_anonymous``. A worker serves no ``/chat``: nothing to check."""
    if role == "worker" or cfg.api.keys:
        return
    host, port = cfg.server.host, cfg.server.port
    if is_loopback(host):
        log.warning("api.keys is empty: POST /chat answers anyone who can reach %s:%d, as any user_id. "
                    "Set api.keys (BOT__API__KEYS='[key]') before exposing this server.", host, port)
        return
    if cfg.api.allow_anonymous:
        log.warning("!!! api.keys is empty and api.allow_anonymous is true: POST /chat on %s:%d answers ANYONE on "
                    "the network, as any user_id. Set api.keys (BOT__API__KEYS='[key]') unless that is intended.",
                    host, port)
        return
    raise ConfigError(f"api.keys is empty and server.host {host!r} is not a loopback address: POST /chat would "
                      "answer anyone on the network. Set api.keys (BOT__API__KEYS='[key]'), listen on 127.0.0.1, "
                      "or set api.allow_anonymous: true (BOT__API__ALLOW_ANONYMOUS=true) to serve it open on purpose")
