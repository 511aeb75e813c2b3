"""systemd/: ``systemd-analyze verify`` on every unit, and the daemons started the way the units start them.

``systemd-analyze verify`` refuses a unit whose ``ExecStart=`` binary does not exist, and the
committed units name the installed path ``/opt/cai/bin/cai``. The tests therefore install the
units with ``systemd/install.sh`` (the same script users run) into a temporary directory with
``PREFIX`` = this virtualenv, so what is verified is exactly what an installation produces.

The start tests read a unit, take its ``ExecStart=`` line (prefix substituted) and its
``Environment=``/``EnvironmentFile=`` semantics, and apply the process-level parts of its sandbox
that need no service manager: ``NoNewPrivileges=`` (``PR_SET_NO_NEW_PRIVS``),
``CapabilityBoundingSet=`` (``PR_CAPBSET_DROP`` of every other capability) and
``MemoryDenyWriteExecute=`` (``PR_SET_MDWE``). They provide ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``
and expect ``READY=1`` and watchdog pings — which is what ``Type=notify`` and ``WatchdogSec=`` rely on.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agents.envfile import load_env_file
from agents.supervisor import NotifyListener
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SERVICES = ["cai-attestation-agent.service", "cai-data-hub.service", "cai-cachefs.service", "cai-gateway.service"]
PREFIX = Path(sys.executable).parent.parent  # the virtualenv: PREFIX/bin/cai exists
INSTALLED_PREFIX = "/opt/cai"
MODEL = "default/aliyun/model-decryption-key"

CAPS = {"CAP_CHOWN": 0, "CAP_FOWNER": 3, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 24, 38, 65, 1


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}: keys repeat (DeviceAllow=), order matters."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot parse {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict, key: str, section: str = "Service") -> str | None:
    found = values(unit, key, section)
    return found[-1] if found else None


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("units")
    env = {**os.environ, "PREFIX": str(PREFIX), "UNIT_DIR": str(root / "system"), "CONF_DIR": str(root / "etc"),
           "NO_RELOAD": "1"}
    result = subprocess.run([str(UNITS / "install.sh")], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (root / "etc" / "cai.env").read_text() == (REPO / "compose" / "cai.env.example").read_text()
    assert oct((root / "etc" / "cai.env").stat().st_mode & 0o777) == "0o600"
    return root / "system"


def verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(unit_dir / n) for n in names)],
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}, capture_output=True, text=True,
                          check=False)


# --------------------------------------------------------------------------- static checks


def test_systemd_analyze_verify_passes_on_every_unit(installed):
    result = verify(installed, *SERVICES, "cai.target")
    # verify exits 0 on mere warnings (an unknown key, an unparsable value): require silence too.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
    for name in SERVICES:
        assert f"ExecStart={PREFIX}/bin/cai " in (installed / name).read_text()


def test_verify_catches_a_broken_unit(installed, tmp_path):
    broken = tmp_path / "cai-data-hub.service"
    broken.write_text((installed / "cai-data-hub.service").read_text().replace("WatchdogSec=30s", "WatchdogSec=x"))
    for name in ("cai-attestation-agent.service",):
        (tmp_path / name).write_text((installed / name).read_text())
    assert verify(tmp_path, "cai-data-hub.service").stderr.strip()
    missing = tmp_path / "cai-gateway.service"
    missing.write_text((UNITS / "cai-gateway.service").read_text())  # /opt/cai/bin/cai does not exist here
    assert verify(tmp_path, "cai-gateway.service").returncode != 0


def test_install_refuses_a_prefix_without_cai(tmp_path):
    result = subprocess.run([str(UNITS / "install.sh")], env={**os.environ, "PREFIX": str(tmp_path),
                            "UNIT_DIR": str(tmp_path / "u"), "CONF_DIR": str(tmp_path / "c"), "NO_RELOAD": "1"},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "bin/cai not found" in result.stderr
    assert not (tmp_path / "u").exists()


def test_units_notify_order_share_run_cai_and_are_hardened():
    units = {name: parse_unit(UNITS / name) for name in SERVICES}
    target = parse_unit(UNITS / "cai.target")
    assert set(one(target, "Wants", "Unit").split()) == set(SERVICES)
    for name, unit in units.items():
        assert one(unit, "Type") == "notify" and one(unit, "NotifyAccess") == "main", name
        assert one(unit, "EnvironmentFile") == "/etc/cai/cai.env", name
        assert one(unit, "ExecStart").startswith(f"{INSTALLED_PREFIX}/bin/cai "), name
        assert one(unit, "Restart") == "on-failure" and one(unit, "WatchdogSec"), name
        assert "cai" in one(unit, "RuntimeDirectory").split() and one(unit, "RuntimeDirectoryPreserve") == "yes"
        assert one(unit, "NoNewPrivileges") == "yes" and one(unit, "LockPersonality") == "yes", name
        assert one(unit, "PartOf", "Unit") == "cai.target" and one(unit, "WantedBy", "Install") == "cai.target"
        families = one(unit, "RestrictAddressFamilies").split()
        assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families), name
        assert ("AF_NETLINK" in families) == (name == "cai-gateway.service"), name
    order = {name: (one(u, "Requires", "Unit"), one(u, "After", "Unit") or "") for name, u in units.items()}
    assert order["cai-data-hub.service"][0] == "cai-attestation-agent.service"
    assert order["cai-cachefs.service"][0] == "cai-data-hub.service"
    assert order["cai-gateway.service"][0] == "cai-attestation-agent.service"
    for name, (requires, after) in order.items():
        if requires:
            assert requires in after.split(), name
    caps = {name: set((one(u, "CapabilityBoundingSet") or "").split()) for name, u in units.items()}
    assert caps["cai-cachefs.service"] == {"CAP_SYS_ADMIN"}
    assert caps["cai-gateway.service"] == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert caps["cai-data-hub.service"] == {"CAP_CHOWN", "CAP_FOWNER"}
    assert caps["cai-attestation-agent.service"] == {"CAP_SYS_ADMIN"}
    assert "/dev/fuse rw" in values(units["cai-cachefs.service"], "DeviceAllow")
    assert "char-tpmrm rw" in values(units["cai-attestation-agent.service"], "DeviceAllow")
    # A private mount namespace would hide the FUSE mount from the inference server.
    for key in ("ProtectSystem", "PrivateTmp", "ProtectHome", "ReadWritePaths", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "TemporaryFileSystem"):
        assert one(units["cai-cachefs.service"], key) is None, key
    for name in ("cai-attestation-agent.service", "cai-data-hub.service", "cai-gateway.service"):
        assert one(units[name], "ProtectSystem") == "strict" and one(units[name], "PrivateTmp") == "yes", name
        assert one(units[name], "ProtectHome") == "yes", name


# --------------------------------------------------------------------------- starting the daemons like systemd




def sandbox(unit: dict):
    """preexec_fn applying the unit's process-level restrictions (what needs no namespaces)."""
    keep = {CAPS[name] for name in (one(unit, "CapabilityBoundingSet") or "").split()}
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    no_new_privs = one(unit, "NoNewPrivileges") == "yes"
    mdwe = one(unit, "MemoryDenyWriteExecute") == "yes"
    umask = one(unit, "UMask")

    def apply() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(last + 1):
            if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
        if no_new_privs and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if mdwe and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
        if umask:
            os.umask(int(umask, 8))

    return apply


async def start_unit(name: str, tmp_path: Path, env_file: Path, overrides: dict[str, str]):
    """Run ``name``'s ExecStart= like systemd would; ``overrides`` stands for a test drop-in."""
    unit = parse_unit(UNITS / name)
    argv = shlex.split(one(unit, "ExecStart").replace(f"{INSTALLED_PREFIX}/bin/cai", f"{PREFIX}/bin/cai"))
    assert Path(argv[0]).is_file()
    assert one(unit, "EnvironmentFile") == "/etc/cai/cai.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE", "MODEL_", "ALT_"))}
    for assignment in values(unit, "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = value
    env.update(load_env_file(env_file))  # EnvironmentFile= overrides Environment=
    env.update(overrides)
    notify = NotifyListener(tmp_path / f"{name}.notify")
    env["NOTIFY_SOCKET"] = str(notify.path)
    # The unit's WatchdogSec= is 30 s or more; a short period shows the pings without waiting that long.
    assert one(unit, "WatchdogSec")
    env["WATCHDOG_USEC"] = "400000"
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out,
                                                    preexec_fn=sandbox(unit))
    return proc, notify, log


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "run"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_aa_and_data_hub_start_from_their_units_and_notify_ready(tmp_path, tmpfs):
    secret = b"model-password-" + os.urandom(12).hex().encode()
    repository = tmp_path / "repository"
    (repository / MODEL).parent.mkdir(parents=True)
    (repository / MODEL).write_bytes(secret)
    run_cai = tmpfs / "cai"  # stands for /run/cai (RuntimeDirectory=cai)
    run_cai.mkdir()
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        env_file = tmp_path / "cai.env"
        example = (REPO / "compose" / "cai.env.example").read_text()
        env_file.write_text(example.replace("TRUSTEE_URL=http://192.0.2.10:8081/api", f"TRUSTEE_URL={trustee.api_url}")
                            .replace("MODEL_MOUNT_POINT=/tmp/model", f"MODEL_MOUNT_POINT={tmp_path / 'model'}"))
        aa_sock, cdh_sock = str(run_cai / "aa.sock"), str(run_cai / "cdh.sock")
        aa, aa_notify, aa_log = await start_unit(
            "cai-attestation-agent.service", tmp_path, env_file,
            {"CAI_AA_SOCKET": aa_sock, "CAI_AA_REST_LISTEN": "off", "CAI_AA_TEE": "sample",
             "CAI_AA_ALLOW_SAMPLE": "true"})
        cdh = None
        try:
            await aa_notify.wait_for("READY=1", proc=aa, log=aa_log)
            await aa_notify.wait_for("WATCHDOG=1", proc=aa, log=aa_log)
            cdh, cdh_notify, cdh_log = await start_unit(
                "cai-data-hub.service", tmp_path, env_file,
                {"CAI_CDH_SOCKET": cdh_sock, "CAI_CDH_AA_SOCKET": aa_sock,
                 "CAI_CDH_RESOURCES_DIR": str(run_cai / "resources"), "CAI_CDH_STARTUP_RETRY_INITIAL": "0.05"})
            await cdh_notify.wait_for("READY=1", proc=cdh, log=cdh_log)
            assert (run_cai / "resources" / "model-key").read_bytes() == secret
            await cdh_notify.wait_for("WATCHDOG=1", proc=cdh, log=cdh_log)
            # The compose/Kubernetes health probe agrees with READY=1.
            for sock in (aa_sock, cdh_sock):
                probe = subprocess.run([f"{PREFIX}/bin/cai", "healthcheck", sock], capture_output=True, text=True,
                                       check=False)
                assert probe.returncode == 0, probe.stderr
        finally:
            if cdh is not None:
                assert await stop(cdh) == 0
            assert await stop(aa) == 0
        aa_notify.drain()
        assert "STOPPING=1" in aa_notify.seen
        for log in (aa_log, tmp_path / "cai-data-hub.service.log"):
            assert secret.decode() not in log.read_text(errors="replace")


async def test_sandbox_is_real(tmp_path):
    """The emulated restrictions do bite: W+X memory and dropped capabilities are refused."""
    unit = parse_unit(UNITS / "cai-data-hub.service")
    code = ("import mmap, os\n"
            "try:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)\n    print('wx-allowed')\n"
            "except OSError:\n    print('wx-refused')\n"
            "try:\n    os.mknod('" + str(tmp_path / "null") + "', 0o600 | 0o020000, os.makedev(1, 3))\n"
            "    print('mknod-allowed')\nexcept PermissionError:\n    print('mknod-refused')\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                preexec_fn=sandbox(unit))
    out, _ = await proc.communicate()
    assert out.decode().split() == ["wx-refused", "mknod-refused"]
