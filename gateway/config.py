"""TNG's JSON configuration (the subset this gateway implements), parsed into typed values.

Pure: a dict in, frozen dataclasses out. Users move between TNG and this gateway with the same
file, so key names, aliases (``encap_in_http``/``decap_from_http`` for ``ohttp``, ``dst_filter``
for ``dst_filters``) and the single-object-or-list forms are TNG's. Like TNG (serde
``deny_unknown_fields``) every unknown key is an error, and the message names its full path,
e.g. ``add_egress[0].netfilter.captur_dst``, because a silently ignored typo in a security
configuration (``no_ra`` misspelt, a policy list dropped) is worse than a refusal to start.

``derive_egress_config`` builds the egress configuration ACK-CAI users never write by hand: from
cai.env ``MODEL_SERVICE_PORT`` and the caiOptions annotation ``tng-http-secure-ports``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents import jsonutil
from gateway.errors import GatewayConfigError

DEFAULT_SO_MARK = 565
DEFAULT_REFRESH_INTERVAL = 600
DEFAULT_AA_ADDR = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
#: ``"compat": "2.2.4"`` selects the wire generation of TNG 2.0.0 … 2.2.4: rats-tls with ALPN ``h2`` and
#: HTTP/2 CONNECT inside, key binding format A, and ``encap_in_http``/``decap_from_http`` meaning
#: "rats-tls inside an h2c POST" instead of OHTTP (their meaning since TNG 2.2.5).
COMPAT_2_2_4 = "2.2.4"
COMPAT_VALUES = (COMPAT_2_2_4,)
MAX_CONFIG_BYTES = 1024 * 1024


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class MappingRule:
    listen: Endpoint  # TNG "in"
    target: Endpoint  # TNG "out"


@dataclass(frozen=True)
class CaptureDst:
    host: str | None
    port: int
    port_end: int | None = None


@dataclass(frozen=True)
class Netfilter:
    capture_dst: tuple[CaptureDst, ...]
    capture_local_traffic: bool = False
    listen_port: int | None = None
    so_mark: int = DEFAULT_SO_MARK


@dataclass(frozen=True)
class Attest:
    """Where our evidence comes from: the AA socket (``aa_addr``) or an ASR REST URL."""

    aa_addr: str | None = None
    asr_addr: str | None = None
    aa_provider: str = "coco"
    refresh_interval: int = DEFAULT_REFRESH_INTERVAL
    model: str = "background_check"


@dataclass(frozen=True)
class Verify:
    as_addr: str
    policy_ids: tuple[str, ...] = ("default",)
    trusted_certs_paths: tuple[str, ...] | None = None
    as_headers: Mapping[str, str] = field(default_factory=dict)
    model: str = "background_check"


@dataclass(frozen=True)
class RatsTls:
    multiplex: bool = False


@dataclass(frozen=True)
class Ohttp:
    """OHTTP (``encap_in_http``/``decap_from_http`` since TNG 2.2.5). Options are kept raw."""

    key: Mapping[str, Any] = field(default_factory=dict)
    path_rewrites: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class H2cEncap:
    """TNG <= 2.2.4 ``encap_in_http``/``decap_from_http``: rats-tls carried in an h2c ``POST`` stream.

    Only with ``"compat": "2.2.4"``. ``path_rewrites`` (ingress) choose the outer request path.
    """

    path_rewrites: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Security:
    """The remote-attestation and framing fields shared by ingress and egress entries."""

    no_ra: bool = False
    attest: Attest | None = None
    verify: Verify | None = None
    rats_tls: RatsTls | None = None
    ohttp: Ohttp | None = None
    compat: str | None = None
    h2c: H2cEncap | None = None

    @property
    def multiplex(self) -> bool:
        """HTTP/2 CONNECT streams inside the TLS session (always for TNG <= 2.2.4)."""
        return self.compat == COMPAT_2_2_4 or (self.rats_tls is not None and self.rats_tls.multiplex)

    @property
    def alpn(self) -> str:
        """The one ALPN protocol offered: TNG >= 2.7 default ``rats-tls``, ``h2`` with multiplex or 2.2.4."""
        return "h2" if self.multiplex else "rats-tls"

    @property
    def binding(self) -> str:
        """Evidence/key binding format of the certificate: ``"A"`` (TNG <= 2.2.4) or ``"B"``."""
        return "A" if self.compat == COMPAT_2_2_4 else "B"


@dataclass(frozen=True)
class EndpointFilter:
    domain: str | None = None
    domain_regex: str | None = None
    ip: str | None = None
    ip_cidr: str | None = None
    port: int | None = None
    port_end: int | None = None


@dataclass(frozen=True)
class HttpProxy:
    listen: Endpoint
    dst_filters: tuple[EndpointFilter, ...] = ()


@dataclass(frozen=True)
class EgressConfig:
    id: int
    mapping: tuple[MappingRule, ...] = ()
    netfilter: Netfilter | None = None
    direct_forward: tuple[str, ...] = ()  # http_path regexes
    security: Security = field(default_factory=Security)

    @property
    def mode(self) -> str:
        return "mapping" if self.mapping else "netfilter"


@dataclass(frozen=True)
class IngressConfig:
    id: int
    mapping: tuple[MappingRule, ...] = ()
    http_proxy: HttpProxy | None = None
    security: Security = field(default_factory=Security)

    @property
    def mode(self) -> str:
        return "mapping" if self.mapping else "http_proxy"


@dataclass(frozen=True)
class GatewayConfig:
    egress: tuple[EgressConfig, ...] = ()
    ingress: tuple[IngressConfig, ...] = ()
    control_interface: Endpoint | None = None
    metric: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- checking helpers


def _fail(path: str, message: str, hint: str | None = None) -> GatewayConfigError:
    return GatewayConfigError(f"gateway config: {path}: {message}", hint=hint)


def _object(value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a JSON object, got {type(value).__name__}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _fail(f"{path}.{unknown[0]}" if path else str(unknown[0]), "unknown key",
                    hint=f"allowed keys here: {', '.join(allowed)}")
    return dict(value)


def _aliased(obj: dict[str, Any], path: str, name: str, *aliases: str) -> Any:
    present = [k for k in (name, *aliases) if k in obj]
    if len(present) > 1:
        raise _fail(path, f"{present[0]!r} and {present[1]!r} are aliases; give only one")
    return obj[present[0]] if present else None


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false")
    return value


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(path, f"must be an integer {lo}..{hi}")
    return value


def _port(value: Any, path: str) -> int:
    return _int(value, path, 1, 65535)


def _str(value: Any, path: str, *, max_len: int = 4096) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise _fail(path, f"must be a non-empty string of at most {max_len} characters")
    return value


def _list(value: Any, path: str, *, single_ok: bool = False) -> list[Any]:
    if single_ok and isinstance(value, Mapping):
        return [value]
    if not isinstance(value, list):
        raise _fail(path, "must be a JSON list" + (" or a single object" if single_ok else ""))
    return value


def _endpoint(value: Any, path: str, *, default_host: str | None = "0.0.0.0") -> Endpoint:  # noqa: S104
    obj = _object(value, path, ("host", "port"))
    if "port" not in obj:
        raise _fail(f"{path}.port", "is required")
    host = _str(obj["host"], f"{path}.host", max_len=253) if "host" in obj else default_host
    if host is None:
        raise _fail(f"{path}.host", "is required")
    return Endpoint(host, _port(obj["port"], f"{path}.port"))


# --------------------------------------------------------------------------- sections


def _mapping(value: Any, path: str) -> tuple[MappingRule, ...]:
    obj = _object(value, path, ("in", "out", "rules"))
    if "rules" in obj:
        if "in" in obj or "out" in obj:
            raise _fail(path, "give either 'rules' or 'in'/'out', not both")
        items = [(_object(r, f"{path}.rules[{i}]", ("in", "out")), f"{path}.rules[{i}]")
                 for i, r in enumerate(_list(obj["rules"], f"{path}.rules"))]
        if not items:
            raise _fail(f"{path}.rules", "must not be empty")
    else:
        items = [(obj, path)]
    rules = []
    for rule, where in items:
        for side in ("in", "out"):
            if side not in rule:
                raise _fail(f"{where}.{side}", "is required")
            if isinstance(rule[side], Mapping) and "port_end" in rule[side]:
                raise _fail(f"{where}.{side}.port_end", "port ranges are not supported by this gateway",
                            hint="write one rule per port")
        rules.append(MappingRule(_endpoint(rule["in"], f"{where}.in"),
                                 _endpoint(rule["out"], f"{where}.out", default_host="127.0.0.1")))
    return tuple(rules)


def _capture_dst(value: Any, path: str) -> tuple[CaptureDst, ...]:
    out = []
    for i, item in enumerate(_list(value, path, single_ok=True)):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        obj = _object(item, where, ("host", "port", "port_end"))
        if "port" not in obj:
            raise _fail(f"{where}.port", "is required")
        port = _port(obj["port"], f"{where}.port")
        end = _port(obj["port_end"], f"{where}.port_end") if "port_end" in obj else None
        if end is not None and end < port:
            raise _fail(f"{where}.port_end", "must be >= port")
        host = _str(obj["host"], f"{where}.host", max_len=64) if "host" in obj else None
        out.append(CaptureDst(host, port, end))
    if not out:
        raise _fail(path, "must name at least one destination")
    return tuple(out)


def _netfilter(value: Any, path: str) -> Netfilter:
    obj = _object(value, path, ("capture_dst", "capture_local_traffic", "listen_port", "so_mark",
                                "capture_cgroup", "nocapture_cgroup"))
    if "capture_dst" not in obj:
        raise _fail(f"{path}.capture_dst", "is required")
    for key in ("capture_cgroup", "nocapture_cgroup"):
        if key in obj:
            raise _fail(f"{path}.{key}", "cgroup filters are not supported by this gateway")
    return Netfilter(
        capture_dst=_capture_dst(obj["capture_dst"], f"{path}.capture_dst"),
        capture_local_traffic=_bool(obj.get("capture_local_traffic", False), f"{path}.capture_local_traffic"),
        listen_port=_port(obj["listen_port"], f"{path}.listen_port") if "listen_port" in obj else None,
        so_mark=_int(obj.get("so_mark", DEFAULT_SO_MARK), f"{path}.so_mark", 1, 2**32 - 1),
    )


def _attest(value: Any, path: str) -> Attest:
    obj = _object(value, path, ("aa_addr", "aa_type", "aa_provider", "asr_addr", "refresh_interval", "model"))
    model = obj.get("model", "background_check")
    if model != "background_check":
        raise _fail(f"{path}.model", f"{model!r} is not supported; only 'background_check'")
    provider = obj.get("aa_provider", "coco")
    if provider not in ("coco", "coco_asr"):
        raise _fail(f"{path}.aa_provider", f"{provider!r} is not supported; use 'coco' or 'coco_asr'")
    aa_addr = _str(obj["aa_addr"], f"{path}.aa_addr") if "aa_addr" in obj else None
    asr_addr = _str(obj["asr_addr"], f"{path}.asr_addr") if "asr_addr" in obj else None
    if aa_addr is not None and not aa_addr.startswith("unix:///"):
        raise _fail(f"{path}.aa_addr", "must be a unix:///path socket address")
    if provider == "coco_asr" and asr_addr is None:
        raise _fail(f"{path}.asr_addr", "is required with aa_provider 'coco_asr'")
    if provider == "coco" and aa_addr is None:
        aa_addr = DEFAULT_AA_ADDR
    if "aa_type" in obj and obj["aa_type"] not in ("uds", "builtin"):
        raise _fail(f"{path}.aa_type", "must be 'uds' or 'builtin'")
    return Attest(aa_addr=aa_addr, asr_addr=asr_addr, aa_provider=provider,
                  refresh_interval=_int(obj.get("refresh_interval", DEFAULT_REFRESH_INTERVAL),
                                        f"{path}.refresh_interval", 0, 86400),
                  model=model)


def _verify(value: Any, path: str) -> Verify:
    obj = _object(value, path, ("as_addr", "as_is_grpc", "as_type", "policy_ids", "trusted_certs_paths",
                                "as_headers", "model", "as_provider"))
    if obj.get("as_is_grpc") is True or obj.get("as_type", "restful") != "restful":
        raise _fail(f"{path}.as_type", "only the RESTful attestation service is supported")
    if obj.get("as_provider", "coco") != "coco":
        raise _fail(f"{path}.as_provider", "only 'coco' (Trustee) is supported")
    model = obj.get("model", "background_check")
    if model != "background_check":
        raise _fail(f"{path}.model", f"{model!r} is not supported; only 'background_check'")
    if "as_addr" not in obj:
        raise _fail(f"{path}.as_addr", "is required", hint="the Trustee attestation service URL, e.g. "
                    "http://<trustee>:8081/api/attestation-service/")
    as_addr = _str(obj["as_addr"], f"{path}.as_addr")
    if not as_addr.startswith(("http://", "https://")):
        raise _fail(f"{path}.as_addr", "must be an http:// or https:// URL")
    policy_ids = tuple(_str(p, f"{path}.policy_ids[{i}]", max_len=256)
                       for i, p in enumerate(_list(obj.get("policy_ids", ["default"]), f"{path}.policy_ids")))
    if not policy_ids:
        raise _fail(f"{path}.policy_ids", "must name at least one policy")
    certs = None
    if "trusted_certs_paths" in obj:
        certs = tuple(_str(p, f"{path}.trusted_certs_paths[{i}]")
                      for i, p in enumerate(_list(obj["trusted_certs_paths"], f"{path}.trusted_certs_paths")))
    headers = obj.get("as_headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in headers.items()):
        raise _fail(f"{path}.as_headers", "must be an object of string header values")
    return Verify(as_addr=as_addr.rstrip("/"), policy_ids=policy_ids, trusted_certs_paths=certs,
                  as_headers=dict(headers), model=model)


def _ohttp(value: Any, path: str, *, egress: bool) -> Ohttp:
    allowed = (("cors", "header_passthrough", "key", "allow_non_tng_traffic_regexes") if egress
               else ("path_rewrites", "path_default", "header_passthrough", "tls", "tls_ca_certs"))
    obj = _object(value, path, allowed)
    rewrites = []
    for i, item in enumerate(_list(obj.get("path_rewrites", []), f"{path}.path_rewrites")):
        rw = _object(item, f"{path}.path_rewrites[{i}]", ("match_regex", "substitution"))
        rewrites.append((_str(rw.get("match_regex"), f"{path}.path_rewrites[{i}].match_regex"),
                         str(rw.get("substitution", ""))))
    key = obj.get("key", {})
    if not isinstance(key, Mapping):
        raise _fail(f"{path}.key", "must be a JSON object")
    return Ohttp(key=dict(key), path_rewrites=tuple(rewrites))


_SECURITY_KEYS = ("no_ra", "attest", "verify", "rats_tls", "ohttp", "encap_in_http", "decap_from_http", "compat")


def _h2c(value: Any, path: str, *, egress: bool) -> tuple[H2cEncap, tuple[str, ...]]:
    """TNG 2.2.4's ``decap_from_http`` (egress) / ``encap_in_http`` (ingress) object.

    Returns the encapsulation and, for an egress, the deprecated ``allow_non_tng_traffic_regexes``
    (TNG 2.2.4 turns them into ``direct_forward`` rules).
    """
    obj = _object(value, path, ("allow_non_tng_traffic_regexes",) if egress else ("path_rewrites",))
    rewrites = []
    for i, item in enumerate(_list(obj.get("path_rewrites", []), f"{path}.path_rewrites")):
        where = f"{path}.path_rewrites[{i}]"
        rw = _object(item, where, ("match_regex", "substitution"))
        for key in ("match_regex", "substitution"):
            if key not in rw:
                raise _fail(f"{where}.{key}", "is required")
        regex = _str(rw["match_regex"], f"{where}.match_regex")
        try:
            re.compile(regex)
        except re.error as exc:
            raise _fail(f"{where}.match_regex", f"is not a valid regular expression: {exc}") from None
        if not isinstance(rw["substitution"], str):
            raise _fail(f"{where}.substitution", "must be a string")
        rewrites.append((regex, rw["substitution"]))
    regexes = tuple(_str(r, f"{path}.allow_non_tng_traffic_regexes[{i}]") for i, r in
                    enumerate(_list(obj.get("allow_non_tng_traffic_regexes", []),
                                    f"{path}.allow_non_tng_traffic_regexes")))
    return H2cEncap(path_rewrites=tuple(rewrites)), regexes


def _compat(obj: dict[str, Any], path: str) -> str | None:
    if "compat" not in obj:
        return None
    value = obj["compat"]
    if value not in COMPAT_VALUES:
        raise _fail(f"{path}.compat", f"{value!r} is not a supported TNG wire generation",
                    hint=f"use one of {', '.join(repr(v) for v in COMPAT_VALUES)} (TNG 2.0.0 … 2.2.4), or omit "
                    "the key for TNG >= 2.7 (rats-tls) / >= 2.2.6 (ohttp)")
    return str(value)


def _security_2_2_4(obj: dict[str, Any], path: str, *, egress: bool, no_ra: bool, attest: Attest | None,
                    verify: Verify | None) -> tuple[Security, tuple[str, ...]]:
    """``"compat": "2.2.4"``: the HTTP encapsulation key means h2c, and the >= 2.2.5 keys do not exist."""
    own, other = ("decap_from_http", "encap_in_http") if egress else ("encap_in_http", "decap_from_http")
    for key, why in (("ohttp", "OHTTP does not exist in TNG <= 2.2.4"),
                     ("rats_tls", "TNG <= 2.2.4 always multiplexes HTTP/2 CONNECT streams; there is no "
                                  "rats_tls option"),
                     (other, f"TNG 2.2.4 calls it '{own}' on an {'egress' if egress else 'ingress'}")):
        if key in obj:
            raise _fail(f"{path}.{key}", f"cannot be used with \"compat\": \"{COMPAT_2_2_4}\": {why}")
    h2c, regexes = (_h2c(obj[own], f"{path}.{own}", egress=egress) if own in obj else (None, ()))
    return Security(no_ra=no_ra, attest=attest, verify=verify, compat=COMPAT_2_2_4, h2c=h2c), regexes


def _security(obj: dict[str, Any], path: str, *, egress: bool) -> Security:
    return _security_and_regexes(obj, path, egress=egress)[0]


def _security_and_regexes(obj: dict[str, Any], path: str, *, egress: bool) -> tuple[Security, tuple[str, ...]]:
    no_ra = _bool(obj.get("no_ra", False), f"{path}.no_ra")
    attest = _attest(obj["attest"], f"{path}.attest") if "attest" in obj else None
    verify = _verify(obj["verify"], f"{path}.verify") if "verify" in obj else None
    if no_ra and (attest or verify):
        raise _fail(f"{path}.no_ra", "cannot be combined with 'attest' or 'verify'")
    if not (no_ra or attest or verify):
        raise _fail(path, "needs at least one of 'attest', 'verify' or 'no_ra'",
                    hint="an egress normally has 'attest', an ingress 'verify'")
    if _compat(obj, path) is not None:
        return _security_2_2_4(obj, path, egress=egress, no_ra=no_ra, attest=attest, verify=verify)
    ohttp_raw = _aliased(obj, path, "ohttp", "decap_from_http" if egress else "encap_in_http",
                         "encap_in_http" if egress else "decap_from_http")
    ohttp = _ohttp(ohttp_raw, f"{path}.ohttp", egress=egress) if ohttp_raw is not None else None
    rats = None
    if "rats_tls" in obj:
        if ohttp is not None:
            raise _fail(f"{path}.rats_tls", "cannot be combined with 'ohttp'/'encap_in_http'")
        r = _object(obj["rats_tls"], f"{path}.rats_tls", ("multiplex",))
        rats = RatsTls(multiplex=_bool(r.get("multiplex", False), f"{path}.rats_tls.multiplex"))
    return Security(no_ra=no_ra, attest=attest, verify=verify, rats_tls=rats, ohttp=ohttp), ()


def _egress(value: Any, path: str, index: int) -> EgressConfig:
    obj = _object(value, path, ("mapping", "netfilter", "direct_forward", *_SECURITY_KEYS))
    modes = [m for m in ("mapping", "netfilter") if m in obj]
    if len(modes) != 1:
        raise _fail(path, "needs exactly one mode: 'mapping' or 'netfilter'" if not modes
                    else f"has two modes {modes}; give exactly one")
    direct = []
    for i, item in enumerate(_list(obj.get("direct_forward", []), f"{path}.direct_forward")):
        rule = _object(item, f"{path}.direct_forward[{i}]", ("http_path",))
        direct.append(_str(rule.get("http_path"), f"{path}.direct_forward[{i}].http_path"))
    security, regexes = _security_and_regexes(obj, path, egress=True)
    if regexes and direct:
        raise _fail(f"{path}.decap_from_http.allow_non_tng_traffic_regexes", "cannot be combined with "
                    "'direct_forward' (it is its deprecated predecessor)", hint="move the regexes to "
                    "direct_forward: [{\"http_path\": ...}]")
    for i, regex in enumerate((*direct, *regexes)):
        try:
            re.compile(regex)
        except re.error as exc:
            raise _fail(f"{path}.direct_forward[{i}].http_path", f"is not a valid regular expression: {exc}"
                        ) from None
    return EgressConfig(
        id=index,
        mapping=_mapping(obj["mapping"], f"{path}.mapping") if "mapping" in obj else (),
        netfilter=_netfilter(obj["netfilter"], f"{path}.netfilter") if "netfilter" in obj else None,
        direct_forward=tuple(direct) or regexes,
        security=security,
    )


def _filters(value: Any, path: str) -> tuple[EndpointFilter, ...]:
    out = []
    for i, item in enumerate(_list(value, path, single_ok=True)):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        obj = _object(item, where, ("domain", "domain_regex", "ip", "ip_cidr", "port", "port_end"))
        out.append(EndpointFilter(
            domain=_str(obj["domain"], f"{where}.domain") if "domain" in obj else None,
            domain_regex=_str(obj["domain_regex"], f"{where}.domain_regex") if "domain_regex" in obj else None,
            ip=_str(obj["ip"], f"{where}.ip") if "ip" in obj else None,
            ip_cidr=_str(obj["ip_cidr"], f"{where}.ip_cidr") if "ip_cidr" in obj else None,
            port=_port(obj["port"], f"{where}.port") if "port" in obj else None,
            port_end=_port(obj["port_end"], f"{where}.port_end") if "port_end" in obj else None,
        ))
    return tuple(out)


def _ingress(value: Any, path: str, index: int) -> IngressConfig:
    obj = _object(value, path, ("mapping", "http_proxy", "netfilter", "socks5", *_SECURITY_KEYS))
    for unsupported in ("netfilter", "socks5"):
        if unsupported in obj:
            raise _fail(f"{path}.{unsupported}", "this ingress mode is not supported by this gateway",
                        hint="use 'http_proxy' or 'mapping'")
    modes = [m for m in ("mapping", "http_proxy") if m in obj]
    if len(modes) != 1:
        raise _fail(path, "needs exactly one mode: 'mapping' or 'http_proxy'" if not modes
                    else f"has two modes {modes}; give exactly one")
    proxy = None
    if "http_proxy" in obj:
        p = _object(obj["http_proxy"], f"{path}.http_proxy", ("proxy_listen", "dst_filters", "dst_filter"))
        if "proxy_listen" not in p:
            raise _fail(f"{path}.http_proxy.proxy_listen", "is required")
        filters = _aliased(p, f"{path}.http_proxy", "dst_filters", "dst_filter")
        proxy = HttpProxy(listen=_endpoint(p["proxy_listen"], f"{path}.http_proxy.proxy_listen"),
                          dst_filters=_filters(filters, f"{path}.http_proxy.dst_filters") if filters else ())
    security = _security(obj, path, egress=False)
    if security.verify is None and not security.no_ra:
        raise _fail(path, "an ingress needs 'verify' (or 'no_ra' for debugging only)")
    return IngressConfig(
        id=index,
        mapping=_mapping(obj["mapping"], f"{path}.mapping") if "mapping" in obj else (),
        http_proxy=proxy,
        security=security,
    )


def parse_config(value: Any) -> GatewayConfig:
    """Validate a TNG-style configuration object; raise GatewayConfigError naming the bad path."""
    obj = _object(value, "", ("add_ingress", "add_egress", "control_interface", "metric", "trace", "admin_bind"))
    egress = tuple(_egress(e, f"add_egress[{i}]", i) for i, e in enumerate(_list(obj.get("add_egress", []),
                                                                                  "add_egress")))
    ingress = tuple(_ingress(e, f"add_ingress[{i}]", i) for i, e in enumerate(_list(obj.get("add_ingress", []),
                                                                                    "add_ingress")))
    if not egress and not ingress:
        raise _fail("", "neither 'add_egress' nor 'add_ingress' has an entry; nothing to run")
    control = None
    if "control_interface" in obj:
        ci = _object(obj["control_interface"], "control_interface", ("restful", "ttrpc"))
        if "ttrpc" in ci:
            raise _fail("control_interface.ttrpc", "is not supported; use 'restful'")
        if "restful" in ci:
            control = _endpoint(ci["restful"], "control_interface.restful")
    metric = None
    if "metric" in obj:
        metric = _object(obj["metric"], "metric", ("exporters",))
        for i, exp in enumerate(_list(metric.get("exporters", []), "metric.exporters")):
            e = _object(exp, f"metric.exporters[{i}]", ("type", "protocol", "endpoint", "headers", "step",
                                                        "server_url", "tags"))
            if e.get("type") not in ("otlp", "falcon", "stdout"):
                raise _fail(f"metric.exporters[{i}].type", "must be 'otlp', 'falcon' or 'stdout'")
    return GatewayConfig(egress=egress, ingress=ingress, control_interface=control, metric=metric)


def parse_config_json(text: str | bytes) -> GatewayConfig:
    """Parse the text of a TNG JSON config file (``tng launch -c`` takes the same file)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise _fail("", f"config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        value = jsonutil.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayConfigError(f"gateway config is not valid JSON: {exc}") from None
    return parse_config(value)


# --------------------------------------------------------------------------- derivation from cai.env


def parse_secure_ports(cai_options: Mapping[str, Any] | str | None) -> tuple[int, ...]:
    """``tng-http-secure-ports`` from the caiOptions annotation (JSON text or parsed object)."""
    if cai_options is None:
        return ()
    if isinstance(cai_options, str):
        try:
            cai_options = jsonutil.loads(cai_options)
        except ValueError:
            raise GatewayConfigError("caiOptions is not valid JSON") from None
    if not isinstance(cai_options, Mapping):
        raise GatewayConfigError("caiOptions must be a JSON object")
    ports = cai_options.get("tng-http-secure-ports", [])
    if not isinstance(ports, list):
        raise _fail("caiOptions.tng-http-secure-ports", "must be a list like [{\"port\": 8080}]")
    out = []
    for i, item in enumerate(ports):
        obj = _object(item, f"caiOptions.tng-http-secure-ports[{i}]", ("port",))
        out.append(_port(obj.get("port"), f"caiOptions.tng-http-secure-ports[{i}].port"))
    return tuple(dict.fromkeys(out))


PROTOCOL_H2C_2_2_4 = "h2c-2.2.4"
DERIVED_PROTOCOLS = ("rats-tls", "ohttp", PROTOCOL_H2C_2_2_4)


def derive_egress_config(
    cai_env: Mapping[str, Any],
    cai_options: Mapping[str, Any] | str | None = None,
    *,
    aa_addr: str = DEFAULT_AA_ADDR,
    protocol: str = "rats-tls",
    capture: str = "netfilter",
    mapping_listen_base: int = 40000,
) -> dict[str, Any]:
    """The TNG-style egress config protecting ``MODEL_SERVICE_PORT`` and every secure port.

    ``capture='netfilter'`` captures the service port in place (what ACK-CAI does);
    ``'mapping'`` listens on ``mapping_listen_base + i`` and forwards to the port on loopback.
    ``protocol`` is ``rats-tls`` (TNG >= 2.7 clients), ``ohttp`` (TNG >= 2.2.6 clients with
    ``encap_in_http``) or ``h2c-2.2.4`` (TNG <= 2.2.4 clients with ``encap_in_http``).
    """
    if protocol not in DERIVED_PROTOCOLS:
        raise GatewayConfigError(f"unknown gateway protocol {protocol!r}",
                                 hint=f"use one of {', '.join(DERIVED_PROTOCOLS)}")
    if capture not in ("netfilter", "mapping"):
        raise GatewayConfigError(f"unknown capture mode {capture!r}", hint="use 'netfilter' or 'mapping'")
    ports: list[int] = []
    if cai_env.get("MODEL_SERVICE_PORT") is not None:
        ports.append(_port(cai_env["MODEL_SERVICE_PORT"], "cai.env MODEL_SERVICE_PORT"))
    ports.extend(p for p in parse_secure_ports(cai_options) if p not in ports)
    if not ports:
        raise GatewayConfigError("no port to protect: cai.env has no MODEL_SERVICE_PORT and caiOptions no "
                                 "tng-http-secure-ports", hint="set MODEL_SERVICE_PORT=8080 in cai.env")
    entries = []
    for i, port in enumerate(ports):
        entry: dict[str, Any] = {"attest": {"aa_addr": aa_addr}}
        if capture == "netfilter":
            entry["netfilter"] = {"capture_dst": {"port": port}, "capture_local_traffic": False}
        else:
            entry["mapping"] = {"in": {"host": "0.0.0.0", "port": mapping_listen_base + i},  # noqa: S104
                                "out": {"host": "127.0.0.1", "port": port}}
        if protocol == "ohttp":
            entry["ohttp"] = {}
        elif protocol == PROTOCOL_H2C_2_2_4:  # for the deployment guide's TNG 2.2.4 client with encap_in_http
            entry["compat"] = COMPAT_2_2_4
            entry["decap_from_http"] = {}
        else:
            entry["rats_tls"] = {"multiplex": False}
        entries.append(entry)
    return {"add_egress": entries}
