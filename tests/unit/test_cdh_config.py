"""Resource map and settings: cai.env entries, [[cdh.resources]], precedence, clear config errors."""

from __future__ import annotations

import pytest

from agents.errors import ConfigError
from data_hub.config import load_hub_config

ENV = {"TRUSTEE_URL": "http://10.0.0.5:8081/api/", "MODEL_KEY_ID": "kbs:///default/aliyun/model-decryption-key",
       "ALT_TRUSTEE_URL": "http://10.0.0.6:8080", "ALT_KEY_ID": "kbs:///default/aliyun/crag-master-key"}


def write(tmp_path, text: str):
    path = tmp_path / "cai.toml"
    path.write_text(text)
    return path


def test_cai_env_entries_and_defaults():
    config = load_hub_config(environ=ENV)
    entries = {e.file: e for e in config.entries}
    assert set(entries) == {"model-key", "alt-key"}
    assert entries["model-key"].trustee_url == "http://10.0.0.5:8081/api"  # normalised: one session per Trustee
    assert str(entries["alt-key"].uri.path) == "default/aliyun/crag-master-key"
    assert all(e.required for e in entries.values())
    s = config.settings
    assert (s["resources_dir"], s["socket"], s["aa_socket"], s["file_mode"], s["refresh_interval"],
            s["allow_persistent_storage"], s["rest_listen"]) == (
        "/run/cai/resources", "/run/cai/cdh.sock", "/run/cai/aa.sock", "0400", 0.0, False, "off")
    assert config.default_trustee == ENV["TRUSTEE_URL"]


def test_extra_resources_and_precedence(tmp_path):
    path = write(tmp_path, """
[cdh]
refresh_interval = 60
resources_dir = "/run/x"

[[cdh.resources]]
uri = "kbs:///default/rag/index-key"
required = false

[[cdh.resources]]
uri = "kbs://10.0.0.7:8080/other/k/v"
file = "other-key"

[[cdh.resources]]
uri = "kbs:///a/b/c"
trustee_url = "http://10.0.0.8:8081/api"
""")
    config = load_hub_config(config_file=path, environ={**ENV, "CAI_CDH_REFRESH_INTERVAL": "5"},
                             overrides={"resources_dir": "/run/y"})
    entries = {e.file: e for e in config.entries}
    assert config.settings["refresh_interval"] == 5.0  # env beats file
    assert config.settings["resources_dir"] == "/run/y"  # CLI beats file
    assert entries["index-key"].required is False
    assert entries["index-key"].trustee_url == "http://10.0.0.5:8081/api"  # default Trustee
    assert entries["other-key"].trustee_url == "http://10.0.0.7:8080"  # from the URI authority
    assert entries["c"].trustee_url == "http://10.0.0.8:8081/api"


@pytest.mark.parametrize("toml, match", [
    ('[[cdh.resources]]\nuri = "kbs:///../etc/passwd"\n', r"kbs:///\.\./etc/passwd"),
    ('[[cdh.resources]]\nuri = "kbs:///a/b"\n', "three path segments"),
    ('[[cdh.resources]]\nuri = "kbs:///a/b/c"\nfile = "../x"\n', "unsafe resource file name"),
    ('[[cdh.resources]]\nuri = "kbs:///a/b/model-key"\n', "same file 'model-key'"),
    ('[[cdh.resources]]\nfile = "x"\n', "missing required key 'uri'"),
    ('[[cdh.resources]]\nuri = "kbs:///a/b/c"\ncolour = 1\n', "unknown key 'colour'"),
    ('[cdh]\nfile_mode = "0644"\n', "0400 or 0440"),
    ('[cdh]\nrefersh_interval = 3\n', "did you mean 'refresh_interval'"),
    ('[cdh]\nowner = "no-such-user-xyz"\n', "unknown user"),
])
def test_config_errors_are_clear(tmp_path, toml, match):
    with pytest.raises(ConfigError, match=match):
        load_hub_config(config_file=write(tmp_path, toml), environ=ENV)


def test_key_id_without_its_trustee():
    with pytest.raises(ConfigError, match="ALT_KEY_ID but not ALT_TRUSTEE_URL"):
        load_hub_config(environ={k: v for k, v in ENV.items() if k != "ALT_TRUSTEE_URL"})
    with pytest.raises(ConfigError, match="MODEL_KEY_ID"):
        load_hub_config(environ={"MODEL_KEY_ID": "kbs:///a/b/../c"})


def test_entry_without_any_trustee(tmp_path):
    with pytest.raises(ConfigError, match="no Trustee for kbs:///a/b/c"):
        load_hub_config(config_file=write(tmp_path, '[[cdh.resources]]\nuri = "kbs:///a/b/c"\n'), environ={})
