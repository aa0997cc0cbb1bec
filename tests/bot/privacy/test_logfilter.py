"""The logging filter (bot/privacy/logfilter.py): no personal data in a log line, whether it came in the
message, its arguments, an exception or a stack; and ``serve`` installs it with the configured policy."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.__main__ import _logging
from bot.logsafe import SecretFilter
from bot.privacy import pii
from bot.privacy.logfilter import PiiFilter, install_pii_filter
from tests.conftest import make_config

PHONE, ID, CARD, EMAIL = "13812345678", "11010519491231002X", "6222021234567890128", "zhang.san@qq.com"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.pii.{id(out)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, out
    logger.removeHandler(handler)


def _clean(text: str) -> None:
    for value in (PHONE, ID, CARD, EMAIL, "138 1234 5678"):
        assert value not in text


def test_message_args_exception_and_stack_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    install_pii_filter(logger=logger)
    logger.info("customer %s wrote %r", PHONE, {"id": ID, "email": EMAIL})
    logger.debug(f"card {CARD} and 138 1234 5678 in the template itself")
    try:
        raise ValueError(f"could not parse {ID} from body phone={PHONE}")
    except ValueError:
        logger.exception("parse failed for order DD20240315123456789")
    logger.warning("stack of %s", EMAIL, stack_info=True)
    text = out.getvalue()
    _clean(text)
    assert "[手机号]" in text and "[身份证号]" in text and "[银行卡号]" in text and "[邮箱]" in text
    assert "ValueError: could not parse [身份证号] from body phone=[手机号]" in text  # the traceback is kept
    assert "DD20240315123456789" in text  # order numbers stay: an operator needs them


def test_bad_arguments_keep_the_template_only(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.addFilter(PiiFilter())
    logger.info("two %s %s", PHONE)  # wrong number of args: the record still goes out, without them
    _clean(out.getvalue())


def test_the_filter_follows_the_process_policy(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    install_pii_filter(logger=logger)
    with pii.using(pii.Redactor({"会员号": r"VIP[0-9]{6}"})):
        logger.info("member VIP123456")
    logger.info("member VIP654321")
    assert "member [会员号]" in out.getvalue() and "member VIP654321" in out.getvalue()


def test_serve_installs_it_after_the_secret_filter_with_the_configured_policy() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root.handlers = [handler]  # basicConfig leaves a configured root alone: the filters go on this handler
    before = pii.policy()
    try:
        _logging(make_config({"privacy.extra_patterns": '{"会员号": "VIP[0-9]{6}"}',
                              "admin.token": "admin-token-0123456789"}))
        kinds = [type(f) for f in handler.filters]
        assert kinds.index(SecretFilter) < kinds.index(PiiFilter)
        logging.getLogger("bot.test").warning("VIP123456 called from %s with admin-token-0123456789", PHONE)
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        pii.configure(before)
    line = out.getvalue()
    assert "[会员号] called from [手机号] with ***" in line
