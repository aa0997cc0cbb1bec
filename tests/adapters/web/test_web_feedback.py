"""The in-memory feedback store: bounded, and erasable per conversation."""

from __future__ import annotations

from adapters.web.feedback import FeedbackRecord, MemoryFeedbackStore


def rec(conversation: str, answer_id: str = "a-1", rating: str = "up") -> FeedbackRecord:
    return FeedbackRecord(conversation=conversation, session_id=conversation.rsplit(":", 1)[-1], answer_id=answer_id,
                          rating=rating, question="如何重置密码？", answer="点击忘记密码", source="faq")


async def test_latest_votes_are_kept_for_a_bounded_number_of_conversations() -> None:
    store = MemoryFeedbackStore(max_records=100, max_conversations=3)
    for n in range(3):
        await store.record(rec(f"web::s{n}"))
    await store.record(rec("web::s0", "a-2", "down"))  # s0 rated again: now the most recent
    for n in range(3, 5):
        await store.record(rec(f"web::s{n}"))
    assert len(store._latest) == 3
    assert await store.ratings("web::s1") == {} and await store.ratings("web::s2") == {}  # rated longest ago
    assert await store.ratings("web::s0") == {"a-1": "up", "a-2": "down"}
    assert await store.ratings("web::s4") == {"a-1": "up"}
    assert len(store.records) == 6  # the records have their own bound (max_records)


async def test_erase_forgets_one_conversation_only() -> None:
    store = MemoryFeedbackStore(max_records=5)
    await store.record(rec("web::gone", "a-1"))
    await store.record(rec("web::kept", "a-1"))
    await store.record(rec("web::gone", "a-2", "down"))
    assert await store.erase("web::gone") == 3  # two records and the votes
    assert await store.ratings("web::gone") == {}
    assert [r.conversation for r in store.records] == ["web::kept"]
    assert store.records.maxlen == 5
    assert await store.ratings("web::kept") == {"a-1": "up"}
    assert await store.erase("web::gone") == 0
