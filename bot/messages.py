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
        "zh": "您是想问以下问题吗？点选即可查看答案，也可以换个说法，或回复“转人工”。",
        "en": "Did you mean one of these? Pick one to see the answer, rephrase, or reply \"human\".",
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
    "safety_fallback": {  # a reply the output filter stopped (bot/safety/output_filter.py)
        "zh": "抱歉，这个问题我暂时无法回答。您可以换个问法，或回复“转人工”联系人工客服。",
        "en": "Sorry, I can't answer that. Please try asking another way, or reply \"human\" to reach an agent.",
    },
    "safety_refused_injection": {  # the input filter refused an attempt to steer the bot (bot/safety/input_filter.py)
        "zh": "抱歉，我只能协助与我们的产品和服务相关的问题，无法执行这类请求。请问还有什么可以帮您？",
        "en": "Sorry, I can only help with questions about our products and services, not with that request. "
              "Anything else I can help with?",
    },
    "safety_refused": {  # the input filter refused a message with blocked content
        "zh": "抱歉，您的消息包含不适宜的内容，我无法处理。如需帮助，请换个说法，或回复“转人工”联系人工客服。",
        "en": "Sorry, your message contains content I can't handle. Please rephrase it, or reply \"human\" to reach an "
              "agent.",
    },
    "safety_handoff": {  # the input filter handed the conversation to a person
        "zh": "您的消息需要人工客服处理，正在为您转接，请稍候。",
        "en": "A member of our team needs to handle this. Connecting you to an agent, please wait.",
    },
    "safety_withheld": {  # stands in the history for a refused message (kept out of later prompts and of the store)
        "zh": "（该消息未通过安全检查，内容未保存）",
        "en": "(this message did not pass the safety check; its text was not kept)",
    },
    # While a person has the conversation (bot/dialogue/waiting.py): never silence without a word.
    "handoff_hours": {  # after a handoff, inside the service hours
        "zh": "人工客服服务时间：{hours}。客服接入后会直接在这里回复您，请稍候。",
        "en": "Our agents are available {hours}. An agent will reply right here; please wait a moment.",
    },
    "handoff_closed": {  # after a handoff, outside the service hours
        "zh": "现在是非人工服务时间（服务时间：{hours}），人工客服将于{next}上线后回复您。"
              "您可以直接在这里留言说明问题，客服上线后会第一时间处理。",
        "en": "Our agents are offline right now (hours: {hours}); a person will answer from {next}. "
              "You can leave a message here and they will pick it up first thing.",
    },
    "handoff_noted": {  # the first message left outside the service hours (once, not every message)
        "zh": "已收到您的留言，人工客服将于{next}上线后第一时间回复您。",
        "en": "Got your message; an agent will reply from {next}.",
    },
    "handoff_late": {  # the customer wrote again and no agent has replied within handoff.agent_timeout_s
        "zh": "抱歉，人工客服暂时还没有回复您。您可以继续等待，客服会在这里回复；"
              "也可以点击“继续咨询机器人”，由智能客服先为您解答。",
        "en": "Sorry, no agent has replied yet. You can keep waiting and they will answer here, or choose "
              "\"Continue with the assistant\" and I'll help you meanwhile.",
    },
    "handoff_continue": {  # quick reply that gives the conversation back to the bot
        "zh": "继续咨询机器人",
        "en": "Continue with the assistant",
    },
    "handoff_bot_back": {  # the customer chose the bot instead of waiting
        "zh": "好的，智能客服继续为您服务（人工客服回复时也会在这里联系您）。请问有什么可以帮您？",
        "en": "Sure, I'm back to help (if an agent replies, you'll see it here too). What can I do for you?",
    },
    "unsupported": {
        "zh": "抱歉，暂不支持该类型的消息，请发送文字。",
        "en": "Sorry, this kind of message isn't supported yet. Please send text.",
    },
}


def text(name: str, lang: str | None) -> str:
    table = _TEXTS[name]
    return table.get(lang or "zh", table["zh"])
