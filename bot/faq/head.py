"""What is asked, over what is mentioned: the kind of question (how long, where, how much, how, why, can I),
used to re-rank the lexical candidates.

"退款审核通过了 几天能到账" shares 几天能到 with delivery time but asks when money comes back; an entry whose
question asks the same kind of thing as the message gains, one that asks another kind of thing loses. (A key
topic-word bonus was tried as well and did not help on the dev set, so it is not here.)
"""

from __future__ import annotations

import re

# Matched on rewritten text (bot/faq/synonyms.py): 什么时候/多长时间 are already 多久, 咋/如何 are 怎么.
KINDS: dict[str, re.Pattern[str]] = {
    "time": re.compile(r"多久|(?<!好)几天(?!了)|几个工作日|几号|几点|多快|有效期"),
    "place": re.compile(r"在哪里|入口|地址|寄到|发到哪|去哪"),
    "cost": re.compile(r"多少钱|谁出|谁承担|谁付|收费|手续费|运费|包邮|退多少"),
    "problem": re.compile(r"怎么办|失败|不了|打不开|收不到|不更新|破损|发错|漏发|被盗|冻结|驳回|闪退|网络异常"),
    "reason": re.compile(r"为什么"),
    "method": re.compile(r"怎么(?!办)|流程|步骤|操作|在哪里"),
    "yesno": re.compile(r"能不能|可不可以|可以吗|能.{0,10}吗|是否|会不会|支持.{0,10}吗|有没有|吗$|不$|么$"),
}

KIND_BONUS = 0.12  # share of the score added when the message asks the kind of thing the entry answers
KIND_PENALTY = 0.12  # share taken when both ask something and the kinds differ (chosen on the dev set)


def kinds(prepared: str) -> frozenset[str]:
    return frozenset(k for k, rx in KINDS.items() if rx.search(prepared))


def factor(query_kinds: frozenset[str], entry_kinds: frozenset[str]) -> float:
    """The multiplier for one entry; 1 when either side asks nothing recognisable."""
    if not query_kinds or not entry_kinds:
        return 1.0
    return 1.0 + (KIND_BONUS if query_kinds & entry_kinds else -KIND_PENALTY)
