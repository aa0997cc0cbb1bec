"""Which arm a user is in, and the adapter that arm makes the turn's model calls use.

The arm is a pure function of the test's name and the user (channel, tenant, user id): SHA-256, never
Python's ``hash()`` (salted per process), so every worker, every restart and ``ab-report`` agree, and one
customer keeps one arm across conversations. The test's name is part of the hash so that a new test
reshuffles users instead of handing the same customers the treatment every time.
"""

from __future__ import annotations

import bisect
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass

from bot.types import ConversationRef
from engine.config import AbArm, AbTest

_SPAN = float(2**64)


def user_key(ref: ConversationRef) -> str:
    """The user, not the conversation: a customer's next conversation is in the same arm."""
    return f"{ref.channel}\x1f{ref.tenant}\x1f{ref.user_id}"


def bucket(test: str, key: str) -> float:
    """A uniform position in [0, 1) for this user in this test (64 bits of SHA-256)."""
    digest = hashlib.sha256(f"{test}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SPAN


def pick(test: AbTest, key: str) -> AbArm:
    """The arm whose share of the cumulative weights holds the user's bucket."""
    total = sum(arm.weight for arm in test.arms)
    edges, acc = [], 0.0
    for arm in test.arms:
        acc += arm.weight / total
        edges.append(acc)
    index = bisect.bisect_right(edges, bucket(test.name, key))
    return test.arms[min(index, len(test.arms) - 1)]  # a rounding gap at the top belongs to the last arm


@dataclass(frozen=True, slots=True)
class ArmChoice:
    test: str
    arm: str
    adapter: str | None  # None: the base model (which overrides a node's adapter too)

    @property
    def id(self) -> str:
        """What the archive keeps in ``turns.arm`` and replies carry in ``meta["arm"]``: the test's name is in it,
        so ``ab-report --test`` finds a test's turns even after it left the config."""
        return f"{self.test}/{self.arm}"


def choose(test: AbTest, ref: ConversationRef) -> ArmChoice:
    arm = pick(test, user_key(ref))
    return ArmChoice(test.name, arm.name, arm.adapter)


# The arm of the turn running in this asyncio task, read by ``Answerer`` when it calls the model.
#
# Why a context variable: the turn handler's interface is ``handle(event, state, stream)``; passing the arm
# through it would change every handler and the dialogue graph's nodes, which choose adapters themselves. A
# context variable belongs to the task that runs the turn (a conversation's mailbox) and is copied into
# tasks the turn starts, so other conversations' turns, running concurrently, never see it. The ``ab`` step
# sets it at the start of every turn (also to None for a user in no test) and ``ab_tag`` clears it at the
# end, so nothing carries over to the next turn or to work outside a turn.
current_arm: ContextVar[ArmChoice | None] = ContextVar("kefu_ab_arm", default=None)


def arm_adapter(node_adapter: str | None) -> str | None:
    """The adapter a model call uses: the turn's arm wins over the node's own (an A/B test of adapters has to
    replace whatever the node would use, or the arms would not differ); without an arm, the node's."""
    choice = current_arm.get()
    return node_adapter if choice is None else choice.adapter
