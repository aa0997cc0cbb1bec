"""The group robot notifier, registered on the running hub's services."""

from __future__ import annotations

from adapters.wecom.robot import RobotNotifier

from .conftest import HubFactory
from .fake_wecom import FakeWecom


async def test_robot_registered_and_notifies_the_team(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"wecom.robot_key": "robot-key-1"})
    robots = [n for n in hub.services.notifiers if n.name == "wecom-robot"]
    assert len(robots) == 1
    await robots[0].notify("转人工", "用户 zhangsan 请求人工客服：订单 20231111 未发货")
    assert len(fake_wecom.robot) == 1
    call = fake_wecom.robot[0]
    assert call.params == {"key": "robot-key-1"}
    assert call.body == {"msgtype": "markdown",
                         "markdown": {"content": "**转人工**\n用户 zhangsan 请求人工客服：订单 20231111 未发货"}}


async def test_robot_splits_long_markdown_and_text(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"wecom.robot_key": "k"})
    robot = next(n for n in hub.services.notifiers if isinstance(n, RobotNotifier))
    body = "\n".join(f"- 第{i}条会话记录：客户询问退款进度，已告知 1-3 个工作日原路退回。" for i in range(120))
    await robot.notify("会话记录", body)
    markdown = [c.body["markdown"]["content"] for c in fake_wecom.robot]
    assert len(markdown) >= 2 and all(len(m.encode()) <= 4096 for m in markdown)
    fake_wecom.robot.clear()
    await robot.send_text("告" * 1500, mentioned=("@all",))
    texts = [c.body["text"] for c in fake_wecom.robot]
    assert len(texts) == 3 and all(len(t["content"].encode()) <= 2048 for t in texts)
    assert texts[0]["mentioned_list"] == ["@all"]


async def test_robot_backs_off_on_45009(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"wecom.robot_key": "k"})
    robot = next(n for n in hub.services.notifiers if isinstance(n, RobotNotifier))
    fake_wecom.robot_script = [45009]
    await robot.notify("告警", "模型服务不可用，已切换到 FAQ 回答")
    assert len(fake_wecom.robot) == 2


async def test_robot_alone_enables_the_channel(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"wecom.corp_id": None, "wecom.aibot_token": None, "wecom.robot_key": "k"})
    async with hub.http.post(hub.url("/wecom/callback"), data=b"<xml/>") as r:
        assert r.status == 404  # no app configured: no callback route
    assert any(isinstance(n, RobotNotifier) for n in hub.services.notifiers)
