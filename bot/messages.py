"""User-facing fixed texts in the languages we answer in (Chinese first)."""

from __future__ import annotations

_TEXTS: dict[str, dict[str, str]] = {
    "greeting": {
        "zh": "您好，我是智能客服，请问有什么可以帮您？",
        "en": "Hello, I'm the virtual assistant. How can I help you?",
    },
    "unknown": {
        "zh": "抱歉，这个问题我暂时无法准确回答。您可以换个说法，或回复“转人工”联系人工客服。",
        "en": "Sorry, I can't answer that reliably yet. Try rephrasing, or reply \"human\" to reach an agent.",
    },
    "unknown_suggest": {
        "zh": "抱歉，我没有完全理解。您是想问以下问题吗？也可以回复“转人工”。",
        "en": "Sorry, I'm not sure I understood. Did you mean one of these? You can also reply \"human\".",
    },
    "apology": {
        "zh": "抱歉，系统繁忙，请稍后再试，或回复“转人工”联系人工客服。",
        "en": "Sorry, we're busy right now. Please try again shortly, or reply \"human\" to reach an agent.",
    },
    "attachment_only": {
        "zh": "已收到您发送的文件/图片。请用文字简单描述一下您的问题，方便我为您处理。",
        "en": "Got your file. Please describe your question in a few words so I can help.",
    },
    "voice_unrecognized": {
        "zh": "抱歉，暂时无法识别语音内容，请您用文字输入问题。",
        "en": "Sorry, I couldn't recognise the voice message. Please type your question.",
    },
    "unsupported": {
        "zh": "抱歉，暂不支持该类型的消息，请发送文字。",
        "en": "Sorry, this kind of message isn't supported yet. Please send text.",
    },
}


def text(name: str, lang: str | None) -> str:
    table = _TEXTS[name]
    return table.get(lang or "zh", table["zh"])
