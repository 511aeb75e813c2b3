"""Env-file parsing, the settings schema, the cai.env contract and TOML/JSON loading."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import validators
from agents.config import (
    CAI_ENV_SETTINGS,
    REQUIRED,
    Setting,
    load_cai_env,
    load_config_file,
    load_env_file,
    parse_settings,
)
from agents.envfile import parse_env_text
from agents.errors import CaiError, ConfigError
from agents.logsetup import configure_logging, get_logger
from agents.redaction import clear_secrets, redact


@pytest.fixture(autouse=True)
def _isolate_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


def write(tmp_path: Path, text: str, name: str = "cai.env") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- errors -------------------------------------------------------------------------------------


def test_cai_error_str_includes_hint_and_config_error_is_cai_error() -> None:
    assert str(CaiError("disk full")) == "disk full"
    err = ConfigError("bad port", hint="use 1..65535")
    assert str(err) == "bad port — use 1..65535"
    assert err.hint == "use 1..65535"
    assert isinstance(err, CaiError)


# --- env file -----------------------------------------------------------------------------------


def test_env_file_basic_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\n".join(
            [
                "# a comment",
                "",
                "   ",
                "PLAIN=value",
                "export EXPORTED=yes",
                "SPACED = padded  ",
                "EMPTY=",
                "INLINE=abc # trailing comment",
                "HASH_IN_VALUE=abc#def",
                "URL=http://1.2.3.4:8081/api",
                "SINGLE='it has # and \\n and \"quotes\"'",
                'DOUBLE="say \\"hi\\" \\\\ back"',
                'DOUBLE_COMMENT="x y"   # comment after quotes',
                "EQUALS=a=b=c",
                "CRLF=windows\r",
                "PLAIN=override",
            ]
        ),
    )
    assert load_env_file(path) == {
        "PLAIN": "override",
        "EXPORTED": "yes",
        "SPACED": "padded",
        "EMPTY": "",
        "INLINE": "abc",
        "HASH_IN_VALUE": "abc#def",
        "URL": "http://1.2.3.4:8081/api",
        "SINGLE": 'it has # and \\n and "quotes"',
        "DOUBLE": 'say "hi" \\ back',
        "DOUBLE_COMMENT": "x y",
        "EQUALS": "a=b=c",
        "CRLF": "windows",
    }


def test_env_file_accepts_str_path_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.env"
    path.write_bytes(b"\xef\xbb\xbfKEY=v\n")
    assert load_env_file(str(path)) == {"KEY": "v"}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("S3CRET-VALUE-WITHOUT-EQUALS", "expected '='"),
        ("1BAD=S3CRET-VALUE", "KEY=VALUE"),
        ('KEY="S3CRET-VALUE', "unterminated double-quoted"),
        ("KEY='S3CRET-VALUE", "unterminated single-quoted"),
        ('KEY="S3CRET-VALUE"junk', "after the closing quote"),
        ("KEY S3CRET-VALUE", "expected '='"),
    ],
)
def test_env_file_bad_line_names_file_and_line_but_not_value(
    tmp_path: Path, line: str, fragment: str
) -> None:
    path = write(tmp_path, f"GOOD=1\n# comment\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_env_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert fragment in message
    assert "S3CRET" not in message


def test_env_file_missing_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read env file"):
        load_env_file(tmp_path / "nope.env")
    path = tmp_path / "latin.env"
    path.write_bytes(b"A=1\nB=\xff\xfe\n")
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        load_env_file(path)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_env_parser_only_raises_config_error(text: str) -> None:
    try:
        result = parse_env_text(text, source="fuzz.env")
    except ConfigError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
        st.text(
            alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00\n\r"), max_size=30
        ),
        max_size=5,
    )
)
def test_env_parser_round_trips_double_quoted_values(values: dict[str, str]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = "\n".join(f"{key}={quote(value)}" for key, value in values.items())
    assert parse_env_text(text, source="gen.env") == values


# --- settings schema ----------------------------------------------------------------------------

AA_SETTINGS = (
    Setting("tee_type", str, default="tdx", doc="Which attester to use.", choices=("tdx", "sample")),
    Setting("socket", str, default=REQUIRED, doc="API socket path.", validator=validators.absolute_path),
    Setting("timeout", float, default=5.0, doc="Timeout in seconds."),
    Setting("retries", int, default=3, doc="Retry count."),
    Setting("debug", bool, default=False, doc="Verbose logging."),
    Setting("api_key", str, doc="Key for something.", secret=True, validator=validators.http_url),
)


def test_parse_settings_defaults_and_coercion() -> None:
    got = parse_settings(
        {"socket": "/run/cai/aa.sock", "timeout": "2.5", "retries": "7", "debug": "YES"},
        AA_SETTINGS,
        where="[aa] (cai.toml)",
    )
    assert got == {
        "tee_type": "tdx",
        "socket": "/run/cai/aa.sock",
        "timeout": 2.5,
        "retries": 7,
        "debug": True,
        "api_key": None,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
    ],
)  # fmt: skip
def test_bool_coercion(text: str, expected: bool) -> None:
    assert parse_settings({"socket": "/s", "debug": text}, AA_SETTINGS, where="w")["debug"] is expected


@pytest.mark.parametrize("text", ["maybe", "2", "t", "enabled"])
def test_bool_coercion_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'debug' in \[aa\]: expected a boolean"):
        parse_settings({"socket": "/s", "debug": text}, AA_SETTINGS, where="[aa]")


@pytest.mark.parametrize("text", ["12abc", "1.5", "0x10", "ten", "1 2"])
def test_int_coercion_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"socket": "/s", "retries": text}, AA_SETTINGS, where="here")
    assert "'retries'" in str(info.value)
    assert "here" in str(info.value)
    assert "expected an integer" in str(info.value)


def test_int_coercion_accepts_signs_and_native_ints_but_not_bools() -> None:
    assert parse_settings({"socket": "/s", "retries": " -3 "}, AA_SETTINGS, where="w")["retries"] == -3
    assert parse_settings({"socket": "/s", "retries": 4}, AA_SETTINGS, where="w")["retries"] == 4
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_settings({"socket": "/s", "retries": True}, AA_SETTINGS, where="w")


def test_unknown_key_suggests_closest_match() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"socket": "/s", "tee_typ": "tdx"}, AA_SETTINGS, where="[aa] (/etc/cai/cai.toml)")
    message = str(info.value)
    assert "unknown key 'tee_typ' in [aa] (/etc/cai/cai.toml)" in message
    assert "did you mean 'tee_type'?" in message
    assert "valid keys: api_key, debug, retries, socket, tee_type, timeout" in message


def test_unknown_key_without_close_match_and_allow_unknown() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"socket": "/s", "zzzzzz": 1}, AA_SETTINGS, where="w")
    assert "did you mean" not in str(info.value)
    assert (
        parse_settings({"socket": "/s", "zzzzzz": 1}, AA_SETTINGS, where="w", allow_unknown=True)["retries"]
        == 3
    )


def test_missing_required_choices_and_multiple_problems() -> None:
    with pytest.raises(ConfigError, match=r"missing required key 'socket' in \[aa\]"):
        parse_settings({}, AA_SETTINGS, where="[aa]")
    with pytest.raises(
        ConfigError, match=r"invalid value for 'tee_type' in w: 'sev' is not one of: tdx, sample"
    ):
        parse_settings({"socket": "/s", "tee_type": "sev"}, AA_SETTINGS, where="w")
    with pytest.raises(ConfigError) as info:
        parse_settings({"socket": "relative", "retries": "x"}, AA_SETTINGS, where="w")
    assert "2 problems" in str(info.value)
    assert "'socket'" in str(info.value)
    assert "'retries'" in str(info.value)


def test_secret_values_never_appear_in_errors() -> None:
    secret = "ftp://user:TopS3cretValue@example"
    with pytest.raises(ConfigError) as info:
        parse_settings({"socket": "/s", "api_key": secret}, AA_SETTINGS, where="w")
    message = str(info.value)
    assert "'api_key'" in message
    assert "TopS3cretValue" not in message
    assert secret not in message
    # ...and it was registered for redaction even though it was invalid.
    assert secret not in redact(f"oops {secret}")


def test_secret_choice_error_hides_value() -> None:
    setting = Setting("mode", str, doc="d", secret=True, choices=("alpha", "beta"))
    with pytest.raises(ConfigError) as info:
        parse_settings({"mode": "gamma-secret"}, [setting], where="w")
    assert "gamma-secret" not in str(info.value)
    assert "'mode'" in str(info.value)


def test_validator_may_normalise_value() -> None:
    setting = Setting("peer", str, doc="d", validator=validators.ip_address)
    assert parse_settings({"peer": "::0001"}, [setting], where="w") == {"peer": "::1"}


def test_setting_requires_doc_and_known_kind() -> None:
    with pytest.raises(TypeError, match="doc"):
        Setting("x", str)
    with pytest.raises(TypeError, match="kind"):
        Setting("x", dict, doc="d")


# --- cai.env contract ---------------------------------------------------------------------------


def test_cai_env_settings_cover_the_documented_variables() -> None:
    assert [s.name for s in CAI_ENV_SETTINGS] == [
        "TRUSTEE_URL",
        "MODEL_KEY_ID",
        "MODEL_OSS_BUCKET_PATH",
        "MODEL_OSS_ENDPOINT",
        "MODEL_OSS_ACCESS_KEY_ID",
        "MODEL_OSS_SECRET_ACCESS_KEY",
        "MODEL_OSS_SESSION_TOKEN",
        "MODEL_ENCRYPTION_METHOD",
        "MODEL_MOUNT_POINT",
        "ALT_TRUSTEE_URL",
        "ALT_KEY_ID",
        "MODEL_SERVICE_PORT",
        "TRUSTEE_POLICY",
        "MODEL_SHARING_PEER",
    ]
    assert {s.name for s in CAI_ENV_SETTINGS if s.secret} == {
        "MODEL_OSS_SECRET_ACCESS_KEY",
        "MODEL_OSS_SESSION_TOKEN",
    }


def test_cai_env_defaults() -> None:
    got = load_cai_env({})
    assert got["MODEL_ENCRYPTION_METHOD"] == "gocryptfs"
    assert got["TRUSTEE_POLICY"] == "default"
    assert got["TRUSTEE_URL"] is None
    assert got["MODEL_SHARING_PEER"] is None


GOOD_VALUES = [
    ("TRUSTEE_URL", "http://1.2.3.4:8081/api", "http://1.2.3.4:8081/api"),
    ("TRUSTEE_URL", "https://kbs.example.com", "https://kbs.example.com"),
    ("TRUSTEE_URL", "http://[fd00::1]:8080", "http://[fd00::1]:8080"),
    (
        "MODEL_KEY_ID",
        "kbs:///default/aliyun/model-decryption-key",
        "kbs:///default/aliyun/model-decryption-key",
    ),
    ("MODEL_KEY_ID", "kbs://1.2.3.4:8080/repo/type/tag.v1", "kbs://1.2.3.4:8080/repo/type/tag.v1"),
    ("MODEL_OSS_BUCKET_PATH", "conf-ai:/qwen2.5-3b-gocryptfs/", "conf-ai:/qwen2.5-3b-gocryptfs/"),
    ("MODEL_OSS_ENDPOINT", "oss-cn-beijing-internal.aliyuncs.com", "oss-cn-beijing-internal.aliyuncs.com"),
    ("MODEL_OSS_ENDPOINT", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("MODEL_OSS_ENDPOINT", "127.0.0.1:9000", "127.0.0.1:9000"),
    ("MODEL_OSS_ACCESS_KEY_ID", "LTAI5tExample", "LTAI5tExample"),
    ("MODEL_OSS_SECRET_ACCESS_KEY", "s3cr3t/Key+xyz", "s3cr3t/Key+xyz"),
    ("MODEL_OSS_SESSION_TOKEN", "CAIS-token-value", "CAIS-token-value"),
    ("MODEL_ENCRYPTION_METHOD", "sam", "sam"),
    ("MODEL_ENCRYPTION_METHOD", "gocryptfs", "gocryptfs"),
    ("MODEL_MOUNT_POINT", "/tmp/model", "/tmp/model"),
    ("ALT_TRUSTEE_URL", "http://5.6.7.8:8081/api", "http://5.6.7.8:8081/api"),
    ("ALT_KEY_ID", "kbs:///default/aliyun/crag-master-key", "kbs:///default/aliyun/crag-master-key"),
    ("MODEL_SERVICE_PORT", "8080", 8080),
    ("MODEL_SERVICE_PORT", "65535", 65535),
    ("TRUSTEE_POLICY", "my_policy", "my_policy"),
    ("MODEL_SHARING_PEER", "10.0.0.1 10.0.0.2  fd00::0002", ["10.0.0.1", "10.0.0.2", "fd00::2"]),
    ("MODEL_SHARING_PEER", "192.168.1.7", ["192.168.1.7"]),
]


@pytest.mark.parametrize(("name", "raw", "expected"), GOOD_VALUES)
def test_cai_env_good_values(name: str, raw: str, expected: object) -> None:
    assert load_cai_env({name: raw})[name] == expected


BAD_VALUES = [
    ("TRUSTEE_URL", "ftp://1.2.3.4/api"),
    ("TRUSTEE_URL", "1.2.3.4:8081"),
    ("TRUSTEE_URL", "http:///api"),
    ("TRUSTEE_URL", "http://1.2.3.4:99999/api"),
    ("TRUSTEE_URL", "http://user:pw@1.2.3.4/api"),
    ("TRUSTEE_URL", "http://bad host/api"),
    ("MODEL_KEY_ID", "kbs:///default/aliyun"),
    ("MODEL_KEY_ID", "kbs:///default/aliyun/key/extra"),
    ("MODEL_KEY_ID", "kbs:///default//key"),
    ("MODEL_KEY_ID", "kbs:///default/../key"),
    ("MODEL_KEY_ID", "kbs:///default/aliyun/a..b"),
    ("MODEL_KEY_ID", "kbs:///default/aliyun/.hidden"),
    ("MODEL_KEY_ID", "http:///default/aliyun/key"),
    ("MODEL_KEY_ID", "kbs:///default/aliyun/key?x=1"),
    ("MODEL_KEY_ID", "default/aliyun/key"),
    ("MODEL_OSS_BUCKET_PATH", "conf-ai"),
    ("MODEL_OSS_BUCKET_PATH", "Conf_AI:/x"),
    ("MODEL_OSS_BUCKET_PATH", "conf-ai:/a/../b"),
    ("MODEL_OSS_ENDPOINT", "ftp://oss.example.com"),
    ("MODEL_OSS_ENDPOINT", "oss.example.com/path"),
    ("MODEL_OSS_ENDPOINT", "-bad-.example.com"),
    ("MODEL_ENCRYPTION_METHOD", "aes"),
    ("MODEL_MOUNT_POINT", "tmp/model"),
    ("ALT_TRUSTEE_URL", "not a url"),
    ("ALT_KEY_ID", "kbs:///only/two"),
    ("MODEL_SERVICE_PORT", "0"),
    ("MODEL_SERVICE_PORT", "65536"),
    ("MODEL_SERVICE_PORT", "80a"),
    ("MODEL_SHARING_PEER", "10.0.0.1 not-an-ip"),
    ("MODEL_SHARING_PEER", "10.0.0.256"),
]


@pytest.mark.parametrize(("name", "raw"), BAD_VALUES)
def test_cai_env_bad_values_name_the_key(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cai_env({name: raw})
    assert f"'{name}'" in str(info.value)
    assert "cai.env" in str(info.value)


def test_cai_env_process_env_wins_and_other_vars_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "TRUSTEE_URL=http://10.0.0.1:8081/api\nMODEL_SERVICE_PORT=8080\nUNRELATED=whatever\n",
    )
    got = load_cai_env({"MODEL_SERVICE_PORT": "9090", "PATH": "/usr/bin", "HOME": "/root"}, env_file=path)
    assert got["TRUSTEE_URL"] == "http://10.0.0.1:8081/api"
    assert got["MODEL_SERVICE_PORT"] == 9090
    assert "PATH" not in got
    assert "UNRELATED" not in got


def test_cai_env_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "MODEL_SERVICE_PORT=http\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_cai_env({}, env_file=path)


def test_cai_env_empty_value_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "MODEL_OSS_SESSION_TOKEN=\nMODEL_ENCRYPTION_METHOD=\n")
    got = load_cai_env({}, env_file=path)
    assert got["MODEL_OSS_SESSION_TOKEN"] is None
    assert got["MODEL_ENCRYPTION_METHOD"] == "gocryptfs"


def test_cai_env_secrets_are_registered_and_redacted_in_logs(tmp_path: Path) -> None:
    secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    token = "CAISsessiontoken1234567890"
    path = write(tmp_path, f"MODEL_OSS_SECRET_ACCESS_KEY='{secret_key}'\n")
    got = load_cai_env({"MODEL_OSS_SESSION_TOKEN": token}, env_file=path)
    assert got["MODEL_OSS_SECRET_ACCESS_KEY"] == secret_key
    assert redact(f"k={secret_key} t={token}") == "k=[REDACTED] t=[REDACTED]"

    stream = io.StringIO()
    configure_logging(stream=stream, service="test")
    try:
        get_logger("cfg").info("loaded", config=got, note=f"using {secret_key}")
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_cai_log_handler", False):
                logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert secret_key not in out
    assert token not in out
    record = json.loads(out)
    assert record["config"]["MODEL_OSS_SECRET_ACCESS_KEY"] == "[REDACTED]"


def test_non_secret_invalid_value_is_quoted_for_the_operator() -> None:
    with pytest.raises(ConfigError, match="65536"):
        load_cai_env({"MODEL_SERVICE_PORT": "65536"})


# --- TOML / JSON files --------------------------------------------------------------------------


def test_load_config_file_toml_and_json(tmp_path: Path) -> None:
    toml_path = write(tmp_path, '[aa]\ntee_type = "tdx"\nport = 8006\n', "cai.toml")
    assert load_config_file(toml_path) == {"aa": {"tee_type": "tdx", "port": 8006}}
    json_path = write(tmp_path, '{"aa": {"tee_type": "tdx"}}', "cai.json")
    assert load_config_file(str(json_path)) == {"aa": {"tee_type": "tdx"}}


def test_toml_values_parse_through_schema(tmp_path: Path) -> None:
    path = write(tmp_path, '[aa]\nsocket = "/run/cai/aa.sock"\nretries = 2\ndebug = true\n', "cai.toml")
    section = load_config_file(path)["aa"]
    got = parse_settings(section, AA_SETTINGS, where=f"[aa] ({path})")
    assert (got["retries"], got["debug"]) == (2, True)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("bad.toml", 'a = "x"\nb = = 1\n', "line 2"),
        ("bad.json", '{\n  "a": 1,\n}', "line 3"),
        ("list.json", "[1, 2]", "top level"),
        ("cai.yaml", "a: 1", "unsupported config file type"),
    ],
)
def test_load_config_file_errors(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_load_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.toml")
