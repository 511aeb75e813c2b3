"""Object-storage source: the pure policy (endpoint, addressing, HTTP, credentials) and tree building."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.errors import ConfigError
from cachefs.sources.object_store import (
    ObjectStoreConfig,
    ObjectStoreError,
    ObjectStoreSource,
    build_tree,
    infer_region,
    parse_bucket_path,
    store_options,
)


def cfg(endpoint: str, **kw: object) -> ObjectStoreConfig:
    return ObjectStoreConfig(bucket="conf-ai", prefix="qwen", endpoint=endpoint, **kw)  # type: ignore[arg-type]


def test_bucket_path_contract() -> None:
    assert parse_bucket_path("conf-ai:/qwen2.5-3b-gocryptfs/") == ("conf-ai", "qwen2.5-3b-gocryptfs")
    assert parse_bucket_path("conf-ai:/a/b/") == ("conf-ai", "a/b")
    assert parse_bucket_path("conf-ai:/") == ("conf-ai", "")
    for bad in ("conf-ai", "Bad_Bucket:/x", "conf-ai:/../x", "conf-ai:/./x"):
        with pytest.raises(ConfigError):
            parse_bucket_path(bad)


def test_oss_endpoint_is_virtual_hosted_https_with_region() -> None:
    opts = store_options(cfg("oss-cn-hangzhou.aliyuncs.com"))
    assert opts["endpoint"] == "https://conf-ai.oss-cn-hangzhou.aliyuncs.com"
    assert opts["virtual_hosted_style_request"] is True
    assert opts["region"] == "cn-hangzhou"
    assert opts["prefix"] == "qwen"
    assert opts["client_options"]["allow_http"] is False
    assert infer_region("s3.oss-cn-beijing-internal.aliyuncs.com") == "cn-beijing"
    assert infer_region("s3.eu-west-1.amazonaws.com") == "eu-west-1"
    assert infer_region("minio.internal") is None


def test_loopback_http_is_path_style_and_allowed() -> None:
    opts = store_options(cfg("http://127.0.0.1:9000"))
    assert opts["endpoint"] == "http://127.0.0.1:9000"
    assert opts["virtual_hosted_style_request"] is False
    assert opts["client_options"]["allow_http"] is True


def test_plain_http_to_a_remote_host_is_refused_unless_explicit() -> None:
    with pytest.raises(ConfigError, match="plain-http"):
        store_options(cfg("http://oss-cn-hangzhou.aliyuncs.com"))
    with pytest.raises(ConfigError, match="plain-http"):
        store_options(cfg("http://127.0.0.1:9000", allow_http=False))
    opts = store_options(cfg("http://oss-cn-hangzhou.aliyuncs.com", allow_http=True))
    assert opts["client_options"]["allow_http"] is True


def test_addressing_override_and_its_limits() -> None:
    assert store_options(cfg("https://s3.example.net", addressing="virtual"))["endpoint"] == (
        "https://conf-ai.s3.example.net"
    )
    assert store_options(cfg("oss-cn-hangzhou.aliyuncs.com", addressing="path"))["endpoint"] == (
        "https://oss-cn-hangzhou.aliyuncs.com"
    )
    with pytest.raises(ConfigError, match="virtual-hosted"):
        store_options(cfg("http://127.0.0.1:9000", addressing="virtual"))


def test_anonymous_and_credentials() -> None:
    anon = store_options(cfg("oss-cn-hangzhou.aliyuncs.com"))
    assert anon["skip_signature"] is True and "secret_access_key" not in anon
    signed = store_options(
        cfg("oss-cn-hangzhou.aliyuncs.com", access_key_id="AKID", secret_access_key="s3cr3t-value",
            session_token="sts-token-value")
    )
    assert "skip_signature" not in signed
    assert signed["session_token"] == "sts-token-value"
    with pytest.raises(ConfigError, match="incomplete"):
        store_options(cfg("oss-cn-hangzhou.aliyuncs.com", access_key_id="AKID"))
    with pytest.raises(ConfigError, match="SESSION_TOKEN"):
        store_options(cfg("oss-cn-hangzhou.aliyuncs.com", session_token="sts-token-value"))


def test_secrets_are_not_in_repr() -> None:
    config = cfg("oss-cn-hangzhou.aliyuncs.com", access_key_id="AKID", secret_access_key="s3cr3t-value",
                 session_token="sts-token-value")
    assert "s3cr3t-value" not in repr(config) and "sts-token-value" not in repr(config)


@pytest.mark.parametrize(
    "endpoint", ["", "ftp://x", "https://user:pw@oss.example.com", "https://oss.example.com/bucket", "https://x?y=1"]
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        store_options(cfg(endpoint))


def test_from_cai_env_requires_bucket_and_endpoint() -> None:
    with pytest.raises(ConfigError, match="MODEL_OSS_ENDPOINT"):
        ObjectStoreSource.from_cai_env({"MODEL_OSS_BUCKET_PATH": "conf-ai:/x/"})
    source = ObjectStoreSource.from_cai_env(
        {"MODEL_OSS_BUCKET_PATH": "conf-ai:/qwen/", "MODEL_OSS_ENDPOINT": "oss-cn-hangzhou.aliyuncs.com"}
    )
    assert source.config.anonymous and source.name == "s3://conf-ai/qwen"


# -- tree ------------------------------------------------------------------------------------------


def test_tree_implies_directories_and_folds_markers() -> None:
    entries = build_tree([("a/b/f", 5, '"1"'), ("a", 0, '"m"'), ("g", 0, None), ("a/c", 3, None)])
    assert [(e.path, e.kind, e.size) for e in entries] == [
        ("a", "dir", 0),
        ("a/b", "dir", 0),
        ("a/b/f", "file", 5),
        ("a/c", "file", 3),
        ("g", "file", 0),
    ]
    assert entries[2].etag == '"1"'


def test_tree_rejects_conflicts_and_bad_keys() -> None:
    with pytest.raises(ObjectStoreError, match="both"):
        build_tree([("a", 10, None), ("a/b", 1, None)])
    for key in ("", "a//b", "../x", "a/./b", "a/\x00"):
        with pytest.raises(ObjectStoreError):
            build_tree([(key, 1, None)])


segment = st.text(alphabet="abcXYZ019-_.", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))


@given(st.dictionaries(st.lists(segment, min_size=1, max_size=4).map("/".join), st.integers(1, 100), max_size=30))
def test_tree_properties(objects: dict[str, int]) -> None:
    try:
        entries = build_tree([(k, v, None) for k, v in objects.items()])
    except ObjectStoreError:
        # Only a genuine file/dir conflict may be rejected.
        assert any(other.startswith(k + "/") for k in objects for other in objects)
        return
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths)) and "" not in paths
    kinds = {e.path: e.kind for e in entries}
    for key in objects:
        assert kinds[key] == "file"
        parts = key.split("/")
        for i in range(1, len(parts)):
            assert kinds["/".join(parts[:i])] == "dir"
