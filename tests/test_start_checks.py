"""``serve`` without ``api.keys``: a loud warning on loopback (``make run`` still starts), refused on any other
address unless ``api.allow_anonymous`` says it is on purpose."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from bot.config import ROOT, ConfigError
from bot.startcheck import check_open_api, is_loopback
from tests.conftest import make_config
from tests.services import free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "kefu.example.com",
                                  "localhost.evil.example", "127.0.0.1.nip.io"])
def test_hosts_that_listen_further(host: str) -> None:
    assert not is_loopback(host)


def test_no_keys_on_loopback_starts_with_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.startcheck"):
        check_open_api(make_config(), "all")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "api.keys is empty" in record.getMessage()


def test_no_keys_on_a_public_address_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        check_open_api(make_config({"server.host": "0.0.0.0"}), "gateway")
    assert "api.keys" in str(err.value) and "api.allow_anonymous" in str(err.value)


def test_allow_anonymous_serves_open_on_purpose_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.startcheck"):
        check_open_api(make_config({"server.host": "0.0.0.0", "api.allow_anonymous": "true"}), "all")
    (record,) = caplog.records
    assert "ANYONE" in record.getMessage()


def test_keys_set_or_a_worker_need_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.startcheck"):
        check_open_api(make_config({"server.host": "0.0.0.0", "api.keys": "[k-0123456789]"}), "gateway")
        check_open_api(make_config({"server.host": "0.0.0.0"}), "worker")  # serves no /chat
    assert not caplog.records


def _serve(env: dict[str, str]) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT__")}
    return subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env={**environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_without_keys_on_every_interface_exits_2_saying_why() -> None:
    proc = _serve({"BOT__SERVER__HOST": "0.0.0.0", "BOT__SERVER__PORT": str(free_port())})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "api.keys" in err and "allow_anonymous" in err
    assert "serving on" not in out


def test_make_run_default_still_starts_and_warns() -> None:
    port = free_port()
    proc = _serve({"BOT__SERVER__PORT": str(port)})
    try:
        deadline = time.monotonic() + 120  # only stops a broken test: loading the FAQ and intents takes seconds
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "api.keys is empty" in err
