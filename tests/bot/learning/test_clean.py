from bot.learning.clean import CleanReport, Limits, Record, clean_records, clean_text, fold_width, strip_html


def test_chinese_punctuation_and_meaning_survive() -> None:
    # The original design's regex would delete the quotes, the exclamation mark, the colon and the ¥.
    text = "单笔实付满 59 元包邮！请在“我的-订单”中申请：退款 ¥15.00（1-3 个工作日）"
    assert clean_text(text) == text


def test_full_width_letters_digits_and_spaces_fold_but_punctuation_stays() -> None:
    assert fold_width("订单ＹＤ２４０５１２０００１，好的！") == "订单YD2405120001，好的！"
    assert clean_text("你好\u3000\u3000请问") == "你好 请问"


def test_html_markup_goes_and_line_breaks_stay() -> None:
    raw = "<p>您好，</p><p>请点击<b>“申请售后”</b>&nbsp;即可。</p><script>alert(1)</script>"
    assert clean_text(raw) == "您好，\n\n请点击“申请售后” 即可。"
    assert strip_html("1<2 且 3>2") == "1<2 且 3>2"  # not markup: left alone
    assert clean_text("运费 &lt; 10 元") == "运费 < 10 元"


def test_control_and_invisible_characters_go() -> None:
    assert clean_text("退\u200b款\ufeff多久\x07到账\u202e") == "退款多久到账"
    assert clean_text("第一行\r\n第二行\n\n\n\n第三行  \t 末尾   ") == "第一行\n第二行\n\n第三行 末尾"
    assert clean_text("坏\ud800字") == "坏字"


def test_personal_data_is_redacted() -> None:
    out = clean_text("我的手机 138 1234 5678，邮箱 zhang.san@example.com，身份证 11010519491231002X")
    assert "138" not in out and "example.com" not in out and "11010519491231002X" not in out
    assert "[手机号]" in out and "[邮箱]" in out and "[身份证号]" in out
    assert clean_text("订单 YD2405120001 还没到") == "订单 YD2405120001 还没到"  # not personal


def test_records_dropped_with_their_reasons() -> None:
    report = CleanReport()
    raw = [
        Record("退款多久到账？", "审核通过后 1-3 个工作日原路退回。"),
        Record("  ", "有回答没问题"),
        Record("有问题没回答", "<p> </p>"),
        Record("退款多久到账", "审核通过后1-3个工作日原路退回"),  # same after normalisation
        Record("太长" * 600, "答"),
        "unreadable JSON line",
        Record("退款多久到账？", "审核通过后 1-3 个工作日原路退回。", context="页面：订单详情"),  # other context
    ]
    kept = list(clean_records(raw, Limits(max_query_chars=1000), report))
    assert [r.context for r in kept] == ["", "页面：订单详情"]
    assert report.read == 7 and report.kept == 2
    assert report.dropped == {
        "empty query": 1, "empty response": 1, "duplicate": 1, "query over 1000 characters": 1,
        "unreadable JSON line": 1,
    }
    assert report.examples["duplicate"] == [4]
    text = "\n".join(report.lines())
    assert "dropped 1 × duplicate (e.g. #4)" in text and "太长" not in text
