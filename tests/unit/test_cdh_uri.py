"""Resource URIs and file names: the strict grammar, agreement with the cai.env validator, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import validators
from data_hub.errors import ResourceUriError
from data_hub.uri import check_file_name, default_file_name, parse_kbs_uri, resource_from_api_path


@pytest.mark.parametrize("text, host, port, path", [
    ("kbs:///default/aliyun/model-decryption-key", None, None, "default/aliyun/model-decryption-key"),
    ("kbs:///default/aliyun/crag-master-key", None, None, "default/aliyun/crag-master-key"),
    ("kbs://10.0.0.5:8080/one/2/trois", "10.0.0.5", 8080, "one/2/trois"),
    ("kbs://trustee.example/default/k/v1.2", "trustee.example", None, "default/k/v1.2"),
    ("kbs://[::1]:8081/a/b/c", "::1", 8081, "a/b/c"),
])
def test_valid_uris(text, host, port, path):
    uri = parse_kbs_uri(text)
    assert (uri.host, uri.port, str(uri.path)) == (host, port, path)
    assert str(uri) == text
    assert parse_kbs_uri(str(uri)) == uri


@pytest.mark.parametrize("text", [
    "kbs:///default/aliyun",                 # two segments
    "kbs:///a/b/c/d",                        # four
    "kbs:///a//c",                           # empty segment
    "kbs:///../etc/passwd",                  # traversal
    "kbs:///default/aliyun/..",
    "kbs:///default/aliyun/.hidden",
    "kbs:///a/b/c?version=1",                # query
    "kbs:///a/b/c#frag",
    "http:///a/b/c",                         # wrong scheme
    "kbs://host:99999/a/b/c",                # bad port
    "kbs:///a/b/c d",                        # space
    "kbs:///a/b/c%2F..",
    "kbs:///a/b/" + "x" * 300,               # segment too long for Trustee
    "",
])
def test_invalid_uris_name_the_uri(text):
    with pytest.raises(ResourceUriError) as info:
        parse_kbs_uri(text)
    assert repr(text)[:60] in str(info.value) or len(text) > 200
    assert info.value.http_status == 400


def test_api_path_rejects_traversal():
    with pytest.raises(ResourceUriError, match=r"\.\."):
        resource_from_api_path("..", "b", "c")
    assert str(resource_from_api_path("default", "aliyun", "k").path) == "default/aliyun/k"


@pytest.mark.parametrize("name", ["model-key", "alt-key", "a.b_c-1", "0"])
def test_safe_file_names(name):
    assert check_file_name(name) == name


@pytest.mark.parametrize("name", ["", ".ready", ".hidden", "a/b", "..", "a b", "x" * 256, "é", "a\x00"])
def test_unsafe_file_names(name):
    with pytest.raises(ResourceUriError, match="unsafe resource file name"):
        check_file_name(name)


def test_default_file_name_is_the_tag():
    assert default_file_name(parse_kbs_uri("kbs:///default/aliyun/crag-master-key")) == "crag-master-key"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_fuzz_parser_agrees_with_cai_env_validator(text):
    """One grammar: whatever the cai.env validator accepts, the data hub can fetch, and vice versa."""
    try:
        validators.kbs_uri(text)
        accepted = True
    except ValueError:
        accepted = False
    try:
        uri = parse_kbs_uri(text)
    except ResourceUriError:
        # ResourcePath additionally caps segment length; nothing else may differ.
        assert not accepted or any(len(s) > 255 for s in text.split("/"))
        return
    assert accepted
    assert ".." not in str(uri.path) and str(uri.path).count("/") == 2


segment = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}\Z").filter(lambda s: ".." not in s)


@settings(max_examples=200, deadline=None)
@given(segment, segment, segment)
def test_roundtrip_valid_segments(repo, type_, tag):
    uri = parse_kbs_uri(f"kbs:///{repo}/{type_}/{tag}")
    assert (uri.path.repository, uri.path.type, uri.path.tag) == (repo, type_, tag)
    assert check_file_name(tag) == tag
