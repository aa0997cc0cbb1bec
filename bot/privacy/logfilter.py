"""A logging filter that redacts personal data from every record, whatever a call site logs.

Call sites log ids, not customer text, but a traceback quoting a request body, an aiohttp error carrying a
URL with ``?phone=``, or a debug line from a library can still carry a phone number. ``serve`` puts one
:class:`PiiFilter` on each root handler next to :class:`bot.logsafe.SecretFilter` (handler filters see the
records propagated from every logger). The message is formatted here, so personal data in ``args`` goes
too, and the exception and stack text are formatted and redacted.
"""

from __future__ import annotations

import logging

from bot.logsafe import RewritingFilter
from bot.privacy import pii


class PiiFilter(RewritingFilter):
    """Redacts under ``redactor``, or the process's policy (:func:`bot.privacy.pii.policy`) when None."""

    def __init__(self, redactor: pii.Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor

    def redact(self, text: str) -> str:
        return (self._redactor or pii.policy()).redact(text)

    rewrite = redact


def install_pii_filter(redactor: pii.Redactor | None = None, logger: logging.Logger | None = None) -> PiiFilter:
    """One :class:`PiiFilter` on every handler of ``logger`` (the root logger)."""
    target = logger or logging.getLogger()
    pii_filter = PiiFilter(redactor)
    for handler in target.handlers:
        handler.addFilter(pii_filter)
    return pii_filter
