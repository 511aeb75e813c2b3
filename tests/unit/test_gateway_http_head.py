"""Proxy request heads: CONNECT and absolute-form, rewriting to origin-form, strict refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import EndpointFilter
from gateway.http_head import ProxyRequestError, parse_proxy_request
from gateway.ingress import _matches


def test_connect():
    req = parse_proxy_request(b"CONNECT svc.example:8443 HTTP/1.1\r\nHost: svc.example:8443\r\n\r\n")
    assert (req.connect, req.host, req.port) == (True, "svc.example", 8443)
    assert parse_proxy_request(b"CONNECT [::1]:9 HTTP/1.1\r\n\r\n").host == "::1"


def test_absolute_form_rewritten():
    head = (b"POST http://10.0.0.5:8080/v1/chat?x=1 HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n"
            b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic abc\r\nContent-Length: 2\r\n\r\n")
    req = parse_proxy_request(head)
    assert (req.host, req.port, req.connect) == ("10.0.0.5", 8080, False)
    assert req.origin_form.startswith(b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n")
    assert b"Proxy-" not in req.origin_form and req.origin_form.endswith(b"Connection: close\r\n\r\n")
    assert parse_proxy_request(b"GET http://h HTTP/1.0\r\n\r\n").port == 80


@pytest.mark.parametrize("head", [b"GET /origin HTTP/1.1\r\n\r\n", b"GET https://h/ HTTP/1.1\r\n\r\n",
                                  b"CONNECT h:x HTTP/1.1\r\n\r\n", b"CONNECT h:0 HTTP/1.1\r\n\r\n",
                                  b"GET http://h/ HTTP/2\r\n\r\n", b"GET http://h/\r\n\r\n", b"GET http://h/ HTTP/1.1"])
def test_refusals(head):
    with pytest.raises(ProxyRequestError):
        parse_proxy_request(head)


def test_dst_filters():
    assert _matches(EndpointFilter(domain="*.pai-eas.aliyuncs.com", port=80), "a.pai-eas.aliyuncs.com", 80)
    assert not _matches(EndpointFilter(domain="*.pai-eas.aliyuncs.com", port=80), "a.pai-eas.aliyuncs.com", 81)
    assert not _matches(EndpointFilter(domain="*"), "10.0.0.1", 80)  # 2.7+: domain matches names only
    assert _matches(EndpointFilter(ip_cidr="10.0.0.0/8"), "10.2.3.4", 1)
    assert _matches(EndpointFilter(ip="127.0.0.1", port=8000, port_end=8010), "127.0.0.1", 8005)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz(data):
    try:
        parse_proxy_request(data + b"\r\n\r\n")
    except ProxyRequestError:
        pass
