"""The web channel: an embeddable chat widget with streamed answers (see adapter.py)."""

from adapters.web.adapter import WebAdapter

__all__ = ["WebAdapter"]
