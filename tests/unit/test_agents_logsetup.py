"""Structured logging and secret redaction: captured output must never contain a secret."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from agents.errors import ConfigError
from agents.logsetup import configure_logging, forget_secret, get_logger, redact, register_secret, reset_logging
from agents.redaction import REDACTED, clear_secrets

SECRET = b"\x8f\x01model-key-material\xfe\x00\x11"
TEXT_SECRET = "hunter2-correct-horse"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    clear_secrets()
    out = io.StringIO()
    configure_logging(stream=out, service="unit", level="debug")
    yield out
    reset_logging()
    clear_secrets()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def secret_forms() -> list[str]:
    return [
        SECRET.hex(),
        SECRET.hex().upper(),
        base64.b64encode(SECRET).decode(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
    ]


def assert_no_secret(text: str) -> None:
    assert TEXT_SECRET not in text
    for form in secret_forms():
        assert form not in text, form


def test_json_line_has_timestamp_level_service_logger(stream: io.StringIO) -> None:
    get_logger("agents.test", component="kbs").info("hello", n=3)
    (record,) = lines(stream)
    assert record["event"] == "hello"
    assert record["level"] == "info"
    assert record["service"] == "unit"
    assert record["logger"] == "agents.test"
    assert record["component"] == "kbs"
    assert record["n"] == 3
    assert str(record["timestamp"]).endswith("Z")


def test_level_filtering_and_reconfiguration(stream: io.StringIO) -> None:
    second = io.StringIO()
    configure_logging(stream=second, level="warning", service="other")
    log = get_logger("agents.test")
    log.info("dropped")
    log.warning("kept")
    assert stream.getvalue() == ""
    (record,) = lines(second)
    assert (record["event"], record["service"]) == ("kept", "other")


def test_bad_level_or_format_is_config_error(stream: io.StringIO) -> None:
    with pytest.raises(ConfigError, match="log level"):
        configure_logging(level="loud", stream=stream)
    with pytest.raises(ConfigError, match="log format"):
        configure_logging(fmt="xml", stream=stream)


def test_registered_secret_and_encodings_absent_from_event(stream: io.StringIO) -> None:
    register_secret(SECRET)
    register_secret(TEXT_SECRET)
    log = get_logger("agents.test")
    for form in secret_forms():
        log.info(f"event mentions {form}", value=f"v={form}")
    log.info("text secret", detail=f"pw {TEXT_SECRET} end")
    out = stream.getvalue()
    assert_no_secret(out)
    assert out.count(REDACTED) >= 2 * len(secret_forms()) + 1
    assert lines(stream)[-1]["detail"] == f"pw {REDACTED} end"


def test_text_secret_base64_form_also_redacted(stream: io.StringIO) -> None:
    register_secret(TEXT_SECRET)
    encoded = base64.b64encode(TEXT_SECRET.encode()).decode()
    get_logger().info("basic auth", header=f"Basic {encoded}")
    assert encoded not in stream.getvalue()


def test_nested_values_and_keys_redacted(stream: io.StringIO) -> None:
    register_secret(TEXT_SECRET)
    get_logger("agents.test").info(
        "nested",
        data={"list": [1, ("tuple", TEXT_SECRET)], TEXT_SECRET: "as key", "deep": {"x": [TEXT_SECRET]}},
    )
    (record,) = lines(stream)
    assert_no_secret(stream.getvalue())
    data = record["data"]
    assert isinstance(data, dict)
    assert data["list"] == [1, ["tuple", REDACTED]]
    assert data[REDACTED] == "as key"
    assert data["deep"] == {"x": [REDACTED]}


def test_secret_named_keys_redacted_without_registration(stream: io.StringIO) -> None:
    get_logger("agents.test").info(
        "request",
        password="p1-unregistered",
        api_token="t1-unregistered",
        Authorization="Bearer b1-unregistered",
        headers={"Cookie": "c1-unregistered", "Accept": "application/json"},
        key_material="k1-unregistered",
        session_id="s1-unregistered",
        user="alice",
    )
    out = stream.getvalue()
    assert "unregistered" not in out
    (record,) = lines(stream)
    assert record["password"] == REDACTED
    assert record["headers"] == {"Cookie": REDACTED, "Accept": "application/json"}
    assert record["user"] == "alice"


def test_exception_traceback_redacted(stream: io.StringIO) -> None:
    register_secret(SECRET)
    register_secret(TEXT_SECRET)
    log = get_logger("agents.test")
    try:
        raise RuntimeError(f"failed with {TEXT_SECRET} and {SECRET.hex()}")
    except RuntimeError:
        log.exception("boom")
    (record,) = lines(stream)
    assert "Traceback" in str(record["exception"])
    assert "RuntimeError: failed with [REDACTED] and [REDACTED]" in str(record["exception"])
    assert_no_secret(stream.getvalue())


def test_console_format_redacts_traceback(stream: io.StringIO) -> None:
    configure_logging(stream=stream, fmt="console", service="unit")
    register_secret(TEXT_SECRET)
    try:
        raise ValueError(TEXT_SECRET)
    except ValueError:
        get_logger("agents.test").exception("console boom", extra_info=TEXT_SECRET)
    out = stream.getvalue()
    assert "console boom" in out
    assert "ValueError" in out
    assert TEXT_SECRET not in out


def test_stdlib_logging_is_structured_and_redacted(stream: io.StringIO) -> None:
    register_secret(SECRET)
    register_secret(TEXT_SECRET)
    std = logging.getLogger("aiohttp.access")
    std.info("GET /x?token=%s hex=%s", TEXT_SECRET, SECRET.hex())
    try:
        raise KeyError(TEXT_SECRET)
    except KeyError:
        std.error("handler failed", exc_info=True)
    first, second = lines(stream)
    assert first["logger"] == "aiohttp.access"
    assert first["service"] == "unit"
    assert first["event"] == "GET /x?token=[REDACTED] hex=[REDACTED]"
    assert "KeyError" in str(second["exception"])
    assert_no_secret(stream.getvalue())


def test_forget_secret_and_short_values_ignored(stream: io.StringIO) -> None:
    register_secret("abc")  # too short: would redact ordinary words
    assert redact("abc abcdef") == "abc abcdef"
    register_secret(TEXT_SECRET)
    register_secret(TEXT_SECRET)
    forget_secret(TEXT_SECRET)
    assert redact(TEXT_SECRET) == REDACTED  # still registered once
    forget_secret(TEXT_SECRET)
    assert redact(TEXT_SECRET) == TEXT_SECRET


def test_longest_secret_replaced_first() -> None:
    clear_secrets()
    try:
        register_secret("abcd")
        register_secret("abcdefgh")
        assert redact("xx abcdefgh yy abcd") == f"xx {REDACTED} yy {REDACTED}"
    finally:
        clear_secrets()


def test_registry_is_thread_safe() -> None:
    clear_secrets()
    values = [f"thread-secret-{i:04d}" for i in range(60)]

    def worker(chunk: list[str]) -> None:
        for value in chunk:
            register_secret(value)
            redact(value)

    threads = [threading.Thread(target=worker, args=(values[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert all(redact(value) == REDACTED for value in values)
    finally:
        clear_secrets()
