"""Where an accepted event waits until a worker answers it (``base`` has the guarantees)."""

from bot.inbox.base import Delivery, Handler, Inbox, Overloaded, QueueUnavailable, SeenSet, StoreUnavailable

__all__ = ["Delivery", "Handler", "Inbox", "Overloaded", "QueueUnavailable", "SeenSet", "StoreUnavailable"]
