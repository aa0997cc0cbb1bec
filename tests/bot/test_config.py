import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ROOT, ConfigError, load_config


def test_defaults_load_and_are_embedded_mode() -> None:
    cfg = load_config(None, environ={})
    assert cfg.server.port == 8080
    assert cfg.state.url == "memory://"
    assert cfg.engine.kind == "faq"


def test_env_overrides_nested_keys_with_types() -> None:
    cfg = load_config(
        None,
        environ={
            "BOT__SERVER__PORT": "9000",
            "BOT__STATE__URL": "redis://127.0.0.1:6379/0",
            "BOT__API__KEYS": "[k1, k2]",
            "BOT__ENGINE__OPENAI__TIMEOUT_S": "5.5",
            "UNRELATED": "x",
        },
    )
    assert cfg.server.port == 9000
    assert cfg.state.url == "redis://127.0.0.1:6379/0"
    assert cfg.api.keys == ["k1", "k2"]
    assert cfg.engine.openai.timeout_s == 5.5


def test_config_file_chosen_by_env(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 7000\n", encoding="utf-8")
    assert load_config(None, environ={"BOT_CONFIG": str(path)}).server.port == 7000


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("server:\n  prot: 1\n", {}, "server.prot: unknown key"),
        ("server:\n  port: abc\n", {}, "server.port"),
        ("", {"BOT__STATE__IDLE_TTL_S": "soon"}, "state.idle_ttl_s"),
        ("", {"BOT__ENGINE__KIND": "gpt"}, "engine.kind"),
        ("state:\n  idle_ttl_s: 3600\n  handoff_ttl_s: 600\n", {}, "state.handoff_ttl_s must be at least"),
        ("sever: {}\n", {}, "sever: unknown key"),
        ("- a\n- b\n", {}, "top level must be a mapping"),
        ("server: [\n", {}, "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, yaml_text: str, env: dict[str, str], needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=env)
    assert needle in str(err.value)


def test_cli_exits_2_with_the_key_path_on_a_typo(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: eighty\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(path), "check-config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 2
    assert "server.port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_lists_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "bot", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    for command in ("serve", "faq-eval", "check-config"):
        assert command in proc.stdout


SECRET = "s3cr3t-Value-Never-Printed"


@pytest.mark.parametrize(
    ("yaml_text", "env", "path"),
    [
        # an unknown key whose name does not look secret, holding the secret the operator meant to set
        ("wecom:\n  scret: " + SECRET + "\n", {}, "wecom.scret: unknown key"),
        ("", {"BOT__WECOM__SECERT": SECRET}, "wecom.secert: unknown key"),
        ("", {"BOT__WECOM__APPS": "{sales: {corp_secret: " + SECRET + "}}"}, "wecom.apps.sales.corp_secret"),
        # a secret in a field of the wrong type
        ("", {"BOT__WECOM__AGENT_ID": SECRET}, "wecom.agent_id"),
        ("", {"BOT__API__KEYS": "{k: " + SECRET + "}"}, "api.keys"),
        ("dingtalk:\n  mode: " + SECRET + "\n", {}, "dingtalk.mode"),
        # a whole mistyped section full of secrets
        ("wecomm:\n  secret: " + SECRET + "\n", {}, "wecomm: unknown key"),
        # URLs with passwords in the wrong place or with the wrong scheme
        ("", {"BOT__STATE__URL": f"redsi://:{SECRET}@cache:6379/0"}, "state.url"),
        ("", {"BOT__QUEUE__URL": f"http://kefu:{SECRET}@mq/", "BOT__STATE__URL": "redis://h/0"}, "queue.url"),
        ("", {"BOT__ENGINE__OPENAI__TIMEOUT_S": SECRET}, "engine.openai.timeout_s"),
    ],
)
def test_config_error_names_the_key_path_never_the_value(tmp_path: Path, yaml_text: str, env: dict[str, str],
                                                         path: str) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(file, environ=env)
    assert path in str(err.value)
    assert SECRET not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no pydantic error with the input


def test_config_error_says_what_kind_of_value_it_got(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("server:\n  port: eighty\n  prot: [1]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(file, environ={})
    assert "server.port" in str(err.value) and "got text" in str(err.value)
    assert "server.prot: unknown key" in str(err.value) and "got a list" in str(err.value)


def test_yaml_syntax_error_gives_line_and_column_not_the_line_itself(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(f'wecom:\n  secret: "{SECRET}\n  token: x\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(file, environ={})
    assert "not valid YAML" in str(err.value) and "line " in str(err.value)
    assert SECRET not in str(err.value)


def test_cli_unknown_key_with_a_secret_exits_2_without_printing_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"wecom:\n  scret: {SECRET}\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(path), "check-config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 2
    assert "wecom.scret" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_check_config_masks_every_secret_at_any_depth(tmp_path: Path) -> None:
    """Every secret-looking field, nested app blocks and credentials inside URLs included."""
    secrets = {
        "BOT__WECOM__SECRET": "corp-secret-A1", "BOT__WECOM__TOKEN": "cbTokenA2", "BOT__WECOM__AES_KEY": "K" * 43,
        "BOT__WECOM__ROBOT_KEY": "robot-key-A3", "BOT__WECOM__AIBOT_TOKEN": "aibotTokA4",
        "BOT__WECOM__AIBOT_AES_KEY": "Q" * 43,
        "BOT__WECOM__APPS": "{sales: {token: salesTokA5, aes_key: " + "Z" * 43 + ", secret: sales-secret-A6}}",
        "BOT__DINGTALK__APP_KEY": "dingAppKeyA7", "BOT__DINGTALK__APP_SECRET": "ding-secret-A8",
        "BOT__DINGTALK__NOTIFY_WEBHOOK": "https://oapi.dingtalk.com/robot/send?access_token=dingRobotTokA9",
        "BOT__DINGTALK__NOTIFY_SECRET": "SECdingSignB1",
        "BOT__DIALOGUE__HANDOFF_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/hookPathTokB2",
        "BOT__STATE__URL": "redis://:redisPassB3@127.0.0.1:6379/0?password=redisPassB4",
        "BOT__QUEUE__URL": "amqp://kefu:amqpPassB5@127.0.0.1:5672/",
        "BOT__API__KEYS": "[apiKeyOneB6, apiKeyTwoB7]", "BOT__ADMIN__TOKEN": "adminTokB8",
        "BOT__WEB__SESSION_SECRET": "webSessionB9", "BOT__ENGINE__OPENAI__API_KEY": "sk-engineC1",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT")} | secrets
    proc = subprocess.run([sys.executable, "-m", "bot", "check-config"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    for value in ("corp-secret-A1", "cbTokenA2", "K" * 43, "robot-key-A3", "aibotTokA4", "Q" * 43, "salesTokA5",
                  "Z" * 43, "sales-secret-A6", "dingAppKeyA7", "ding-secret-A8", "dingRobotTokA9", "SECdingSignB1",
                  "hookPathTokB2", "redisPassB3", "redisPassB4", "amqpPassB5", "apiKeyOneB6", "apiKeyTwoB7",
                  "adminTokB8", "webSessionB9", "sk-engineC1"):
        assert value not in proc.stdout + proc.stderr
    assert shown["wecom"]["apps"]["sales"]["secret"] == "***"
    assert shown["state"]["url"] == "redis://***@127.0.0.1:6379/0?password=***"
    assert shown["queue"]["url"] == "amqp://***@127.0.0.1:5672/"
    assert shown["dingtalk"]["notify_webhook"] == "https://oapi.dingtalk.com"
    assert shown["api"]["keys"] == ["***", "***"]
    assert shown["state"]["key_prefix"] == "kefu" and shown["engine"]["max_new_tokens"] == 256
