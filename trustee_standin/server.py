"""Assembly and lifecycle of the Trustee stand-in: ``build_app``, ``StandinServer`` and the CLI.

FOR DEVELOPMENT AND TESTS ONLY (the test suite and ``cai demo``); never a production path.

    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=tmp)) as trustee:
        client_base_url = trustee.api_url          # http://127.0.0.1:PORT/api
        trustee.faults.inject("attest", "status", status=503)

    python -m trustee_standin --dialect 0.1.0 --repository DIR --listen 127.0.0.1:8081 \\
        --resource default/aliyun/model-decryption-key=@key.bin
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

from agents.errors import CaiError
from agents.logsetup import configure_logging, get_logger
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.resource import ResourcePath
from trustee_standin import attestation_service, ca, kbs
from trustee_standin.admin import AdminAuth
from trustee_standin.config import MAX_BODY, StandinConfig
from trustee_standin.control import add_control_routes
from trustee_standin.faults import FaultInjector
from trustee_standin.gateway import add_gateway_routes
from trustee_standin.repository import ResourceRepository
from trustee_standin.sessions import SessionStore
from trustee_standin.state import STATE, StandinState
from trustee_standin.tokens import TokenService

log = get_logger("trustee_standin")

DEV_ONLY_WARNING = "trustee stand-in: for development and tests only"


def build_state(config: StandinConfig) -> tuple[StandinState, Path | None]:
    """Create the shared state; returns the temp CA dir to delete later (None when configured)."""
    temp_dir = None
    ca_dir = config.ca_dir
    if ca_dir is None:
        temp_dir = Path(tempfile.mkdtemp(prefix="trustee-standin-ca-"))
        ca_dir = temp_dir
    test_ca = ca.load_or_create(ca_dir)
    sessions = SessionStore(config.session_timeout_s, config.clock)
    state = StandinState(
        config=config,
        ca=test_ca,
        tokens=TokenService(test_ca.signers, duration_s=config.token_duration_s,
                            leeway_s=config.token_leeway_s, clock=config.clock,
                            policies=config.attestation_policies),
        sessions=sessions,
        repository=ResourceRepository(config.repository),
        faults=FaultInjector(sessions.clear),
        admin=AdminAuth(config.admin_public_key_pem, insecure=config.insecure_admin, clock=config.clock),
    )
    return state, temp_dir


def build_app(config: StandinConfig) -> web.Application:
    """The aiohttp application serving KBS, AS, gateway and (optionally) the fault control plane."""
    log.warning(DEV_ONLY_WARNING, dialect=config.dialect.value, error_style=config.error_style)
    state, temp_dir = build_state(config)
    app = web.Application(client_max_size=MAX_BODY + 1)
    app[STATE] = state
    app.router.add_route("*", "/kbs/v0/{tail:.*}", kbs.dispatch)
    app.router.add_route("*", "/{as_route:attestation|certificate|challenge}", attestation_service.dispatch)
    if config.gateway_prefix:
        add_gateway_routes(app)
    if config.fault_endpoint:
        add_control_routes(app)

    async def on_shutdown(_: web.Application) -> None:
        state.faults.stop()

    async def on_cleanup(_: web.Application) -> None:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


class StandinServer:
    """Runs the stand-in on ``host:port`` (port 0 = ephemeral) as an async context manager."""

    def __init__(self, config: StandinConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config if config is not None else StandinConfig()
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.port = 0

    async def start(self) -> None:
        self.app = build_app(self.config)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("trustee stand-in listening", url=self.url, dialect=self.config.dialect.value)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        """Stop and start again on the same port, as a Trustee restart does.

        Every session and cookie is forgotten (the state is in memory, like Trustee's); the CA that
        signs tokens survives only when ``config.ca_dir`` is set, as a real Trustee keeps its keys.
        """
        port = self.port
        await self.stop()
        self._requested_port = port
        await self.start()

    async def __aenter__(self) -> StandinServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def state(self) -> StandinState:
        if self.app is None:
            raise RuntimeError("the stand-in is not running")
        return self.app[STATE]

    @property
    def url(self) -> str:
        """Bare KBS base URL, e.g. ``http://127.0.0.1:PORT`` (append ``/kbs/v0/...``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """trustee-gateway style base URL (``TRUSTEE_URL``), ``url + "/api"``."""
        return self.url + "/api"

    @property
    def as_url(self) -> str:
        """Attestation-service base URL as TNG's ``as_addr`` (gateway prefix)."""
        return self.api_url + "/attestation-service"

    @property
    def ca_cert_path(self) -> Path:
        """PEM of the test root CA that signs the token certificates (TNG ``trusted_certs_paths``)."""
        return self.state.ca.root_cert_path

    @property
    def faults(self) -> FaultInjector:
        return self.state.faults


# --- CLI ---------------------------------------------------------------------------------------

def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parse_resource(text: str) -> tuple[ResourcePath, bytes]:
    path, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("--resource must be repo/type/tag=@FILE or repo/type/tag=VALUE")
    try:
        resource = ResourcePath.parse(path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value.startswith("@"):
        try:
            return resource, Path(value[1:]).read_bytes()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {value[1:]}: {exc.strerror}") from None
    return resource, value.encode("utf-8")


def _arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustee_standin",
        description="Local Trustee stand-in (KBS + attestation service + /api gateway). "
                    "FOR DEVELOPMENT AND TESTS ONLY: it accepts the no-hardware 'sample' TEE.",
    )
    parser.add_argument("--dialect", default="0.1.0", choices=[d.value for d in Dialect],
                        help="the one KBS protocol version to accept (0.1.0 = Trustee 1.5, 0.4.0 = >= 1.6)")
    parser.add_argument("--repository", type=Path, required=True,
                        help="resource directory <repo>/<type>/<tag>")
    parser.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 8081), help="HOST:PORT")
    parser.add_argument("--policy", choices=["allow_all", "deny_all"], default="allow_all",
                        help="resource policy (default allow_all, like Trustee 1.5.2)")
    parser.add_argument("--allow", action="append", default=[], metavar="REPO/TYPE/TAG",
                        help="allow-list glob; when given, only matching resources are released")
    parser.add_argument("--resource", action="append", type=_parse_resource, default=[],
                        metavar="REPO/TYPE/TAG=@FILE|=VALUE", help="store a resource before starting")
    parser.add_argument("--error-style", choices=["openanolis", "coco"], default="openanolis")
    parser.add_argument("--session-timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--token-duration", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--no-gateway-prefix", action="store_true", help="do not serve the /api prefix")
    parser.add_argument("--duplicate-set-cookie", action="store_true",
                        help="emit Set-Cookie twice under /api, like trustee-gateway")
    parser.add_argument("--ca-dir", type=Path, help="keep the test CA here (created when empty)")
    parser.add_argument("--admin-public-key", type=Path, help="Ed25519 public key PEM for admin JWTs")
    parser.add_argument("--insecure-admin", action="store_true", help="accept admin requests without a JWT")
    parser.add_argument("--enable-fault-endpoint", action="store_true",
                        help="serve the test-only /__standin__/faults and /__standin__/counters")
    parser.add_argument("--log-level", default="info")
    return parser


async def _serve(server: StandinServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"trustee stand-in (development/tests only) on {server.url} (gateway {server.api_url}); "
              f"root CA {server.ca_cert_path}", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _arg_parser().parse_args(argv)
    try:
        configure_logging(level=args.log_level, service="trustee-standin")
        policy = args.allow or args.policy
        config = StandinConfig(
            dialect=Dialect(args.dialect),
            repository=args.repository,
            resource_policy=policy,
            session_timeout_s=args.session_timeout,
            token_duration_s=args.token_duration,
            error_style=args.error_style,
            gateway_prefix=not args.no_gateway_prefix,
            duplicate_set_cookie=args.duplicate_set_cookie,
            ca_dir=args.ca_dir,
            admin_public_key_pem=args.admin_public_key.read_bytes() if args.admin_public_key else None,
            insecure_admin=args.insecure_admin,
            fault_endpoint=args.enable_fault_endpoint,
        )
        repository = ResourceRepository(config.repository)
        for resource, value in args.resource:
            repository.write(resource, value)
        host, port = args.listen
        asyncio.run(_serve(StandinServer(config, host=host, port=port)))
    except (CaiError, OSError) as exc:
        print(f"trustee stand-in: {exc}", file=sys.stderr)
        return 1
    return 0
