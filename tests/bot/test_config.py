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
