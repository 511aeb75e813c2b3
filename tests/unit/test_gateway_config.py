"""TNG JSON config parsing: the documented examples load, unknown keys are named by path, and the
egress is derived from cai.env MODEL_SERVICE_PORT and caiOptions tng-http-secure-ports."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import (
    DEFAULT_AA_ADDR,
    derive_egress_config,
    parse_config,
    parse_config_json,
    parse_secure_ports,
)
from gateway.errors import GatewayConfigError

# The deployment guide's client (ingress) and the docs' egress example, verbatim.
GUIDE_INGRESS = {"add_ingress": [{"http_proxy": {"proxy_listen": {"host": "0.0.0.0", "port": 41000},
                                                 "dst_filters": [{"domain": "*.pai-eas.aliyuncs.com", "port": 80}]},
                                  "encap_in_http": {},
                                  "verify": {"as_addr": "http://127.0.0.1:8080/", "policy_ids": ["default"]}}]}
DOCS_EGRESS = {"add_egress": [{"netfilter": {"capture_dst": {"port": 8080}, "capture_local_traffic": False},
                               "attest": {"aa_addr": "unix:///run/confidential-containers/attestation-agent/"
                                                     "attestation-agent.sock"}}]}


def test_documented_examples_load():
    ingress = parse_config(GUIDE_INGRESS).ingress[0]
    assert ingress.http_proxy is not None and ingress.http_proxy.listen.port == 41000
    assert ingress.http_proxy.dst_filters[0].domain == "*.pai-eas.aliyuncs.com"
    assert ingress.security.ohttp is not None  # encap_in_http is the OHTTP alias since 2.2.5
    assert ingress.security.verify is not None and ingress.security.verify.as_addr == "http://127.0.0.1:8080"
    egress = parse_config(DOCS_EGRESS).egress[0]
    assert egress.netfilter is not None and egress.netfilter.capture_dst[0].port == 8080
    assert egress.netfilter.so_mark == 565 and egress.security.alpn == "rats-tls"


def test_mapping_rules_and_aliases():
    cfg = parse_config({
        "add_egress": [{"mapping": {"rules": [{"in": {"port": 1}, "out": {"port": 2}}]}, "no_ra": True,
                        "rats_tls": {"multiplex": True}, "direct_forward": [{"http_path": "/healthz"}]}],
        "add_ingress": [{"http_proxy": {"proxy_listen": {"port": 3}, "dst_filter": {"ip": "10.0.0.1"}},
                         "verify": {"as_addr": "http://as", "trusted_certs_paths": ["/ca.pem"]}}],
        "control_interface": {"restful": {"host": "127.0.0.1", "port": 9000}},
        "metric": {"exporters": [{"type": "stdout", "step": 5}]},
    })
    eg = cfg.egress[0]
    assert eg.mapping[0].listen.host == "0.0.0.0" and eg.mapping[0].target.host == "127.0.0.1"
    assert eg.security.alpn == "h2" and eg.direct_forward == ("/healthz",)
    assert cfg.ingress[0].http_proxy.dst_filters[0].ip == "10.0.0.1"
    assert cfg.ingress[0].security.verify.trusted_certs_paths == ("/ca.pem",)
    assert cfg.control_interface.port == 9000


@pytest.mark.parametrize(("config", "path"), [
    ({"add_egress": [{"netfilter": {"captur_dst": {"port": 8080}}, "no_ra": True}]},
     "add_egress[0].netfilter.captur_dst"),
    ({"add_egress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}, "attest": {"aa_adr": "x"}}]},
     "add_egress[0].attest.aa_adr"),
    ({"add_ingress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}, "verify": {"as_addr": "http://a",
                                                                                      "policy_id": ["x"]}}]},
     "add_ingress[0].verify.policy_id"),
    ({"metrics": {}, "add_egress": []}, "metrics"),
    ({"add_egress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}}]}, "add_egress[0]"),
    ({"add_egress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}, "no_ra": True,
                      "attest": {"aa_addr": "unix:///x"}}]}, "add_egress[0].no_ra"),
    ({"add_egress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}, "no_ra": True, "ohttp": {},
                      "decap_from_http": {}}]}, "aliases"),
    ({"add_egress": [{"mapping": {"in": {"port": 70000}, "out": {"port": 2}}, "no_ra": True}]},
     "add_egress[0].mapping.in.port"),
    ({"add_ingress": [{"http_proxy": {"proxy_listen": {"port": 1}}, "attest": {}}]}, "add_ingress[0]"),
    ({"add_ingress": [{"mapping": {"in": {"port": 1}, "out": {"port": 2}}, "verify": {"as_addr": "ftp://x"}}]},
     "add_ingress[0].verify.as_addr"),
])
def test_errors_name_the_path(config, path):
    with pytest.raises(GatewayConfigError) as info:
        parse_config(config)
    assert path in str(info.value)


def test_json_text_errors():
    with pytest.raises(GatewayConfigError, match="not valid JSON"):
        parse_config_json("{")
    assert parse_config_json(json.dumps(DOCS_EGRESS)).egress[0].id == 0


def test_derive_from_cai_env_and_options():
    derived = derive_egress_config({"MODEL_SERVICE_PORT": 8080},
                                   '{"tng-http-secure-ports": [{"port": 8080}, {"port": 9090}]}')
    cfg = parse_config(derived)
    assert [e.netfilter.capture_dst[0].port for e in cfg.egress] == [8080, 9090]
    assert all(e.security.attest.aa_addr == DEFAULT_AA_ADDR for e in cfg.egress)
    assert all(not e.netfilter.capture_local_traffic for e in cfg.egress)
    mapped = parse_config(derive_egress_config({"MODEL_SERVICE_PORT": 8080}, None, capture="mapping",
                                               protocol="ohttp"))
    assert mapped.egress[0].mapping[0].target.port == 8080 and mapped.egress[0].security.ohttp is not None
    with pytest.raises(GatewayConfigError, match="MODEL_SERVICE_PORT"):
        derive_egress_config({}, None)
    with pytest.raises(GatewayConfigError, match=r"tng-http-secure-ports\[0\]\.prot"):
        parse_secure_ports({"tng-http-secure-ports": [{"prot": 1}]})


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=10),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.sampled_from(["add_egress", "add_ingress", "mapping", "in", "out", "port", "host",
                                          "attest", "verify", "no_ra", "as_addr", "netfilter", "capture_dst",
                                          "http_proxy", "proxy_listen", "ohttp", "rats_tls", "x"]), c, max_size=4),
                     max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fuzz_only_config_errors(value):
    try:
        parse_config(value)
    except GatewayConfigError:
        pass
