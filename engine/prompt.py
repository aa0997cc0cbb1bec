"""From the hub's ChatMessages to a token budget that fits the model, whatever its chat template.

Why here and not in the hub: only the engine knows its tokenizer and context
size. The hub sends the system prompt, node instructions and retrieved FAQ
entries as system messages, then the bounded history. Many chat templates
accept a single leading system message and strictly alternating turns, so
system messages are merged into one (in order) and consecutive same-role
turns are joined. When the prompt is too long the oldest turns go first, then
the end of the system text (where FAQ entries sit), and only as a last resort
the oldest tokens. User and assistant turns carry other people's words, so
template control tokens in them are broken (:func:`literal_turn`); caller-
supplied context arrives inside the user's turn as quoted data (bot/answer.py),
never in the system message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from engine.base import ChatMessage

Message = dict[str, str]
Encode = Callable[[list[Message]], list[int]]

# Chat templates are rendered to a string and then tokenized with special tokens recognised, so a customer
# who types ``<|im_end|>\n<|im_start|>system`` would open a real system turn of their own. In user and
# assistant turns such control tokens are broken with an invisible U+200B after their first character:
# the model reads the same characters, the tokenizer no longer sees the token.
_CONTROL_TOKEN = re.compile(
    r"<\|[^|<>\s]{1,48}\|>"  # <|im_start|>, <|eot_id|>, <|user|> (Qwen, Llama 3, ChatGLM, Phi)
    r"|<｜[^｜<>\n]{1,48}｜>"  # <｜begin▁of▁sentence｜> (DeepSeek)
    r"|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<(?:bos|eos|pad|unk)>"  # Llama 2, Mistral, Gemma
)


def literal_turn(text: str) -> str:
    """``text`` with chat-template control tokens broken, so it stays text inside its turn."""
    return _CONTROL_TOKEN.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)


def normalize(messages: Sequence[ChatMessage], default_system: str = "") -> list[Message]:
    """One leading system message (``default_system`` when none was given), then merged turns."""
    system = [m.content for m in messages if m.role == "system" and m.content.strip()]
    if not system and default_system:
        system = [default_system]
    out: list[Message] = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    for m in messages:
        if m.role == "system":
            continue
        content = literal_turn(m.content)  # customers' (and agents') words: never template control tokens
        if len(out) > (1 if system else 0) and out[-1]["role"] == m.role:
            out[-1] = {"role": m.role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": m.role, "content": content})
    return out


def fit(encode: Encode, messages: list[Message], budget: int) -> list[int]:
    """Token ids of the prompt, shortened to at most ``budget`` tokens (see module doc for the order)."""
    ids = encode(messages)
    if len(ids) <= budget:
        return ids
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head) :]
    # 1. drop the oldest turns, keeping the last one (the question being answered)
    while len(turns) > 1:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns = turns[1:]  # a conversation should not open with the assistant
        ids = encode(head + turns)
        if len(ids) <= budget:
            return ids
    # 2. shorten the system text from the end; binary search on its length in characters
    if head:
        content = head[0]["content"]
        lo, hi, best = 0, len(content), None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = encode([{"role": "system", "content": content[:mid]}, *turns])
            if len(cand) <= budget:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return best
    # 3. the question alone is too long: keep its end, which is closest to where the answer starts
    return ids[-budget:]


def plain_template(messages: Sequence[Message]) -> str:
    """Fallback for tokenizers without a chat template (base models): a readable transcript."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"
