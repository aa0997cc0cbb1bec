"""The shared RabbitMQ for the inbox tests (Redis comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.services import shared_rabbit_url


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """RABBITMQ_URL (set by `make test`), else 127.0.0.1:5672 if it answers AMQP, else fail saying so."""
    return shared_rabbit_url()
