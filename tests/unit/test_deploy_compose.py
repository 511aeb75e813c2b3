"""compose/: the Compose file against the Compose Specification schema, and cai.env.example both ways.

The schema is the Compose Specification's ``compose-spec.json`` as vendored (offline) by the
check-jsonschema package.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from agents.config import CAI_ENV_SETTINGS, load_cai_env
from agents.envfile import load_env_file
from agents.inject import SIDECARS
from attestation_agent.config import AA_SETTINGS
from attestation_agent.config import DEFAULT_SOCKET as AA_SOCKET
from cachefs.daemon import CACHEFS_SETTINGS
from data_hub.config import CDH_SETTINGS
from data_hub.config import DEFAULT_SOCKET as CDH_SOCKET

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
EXAMPLE = COMPOSE / "cai.env.example"
FILES = ["docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.tpm.yml"]
SECTIONS = {"AA": AA_SETTINGS, "CDH": CDH_SETTINGS, "CACHEFS": CACHEFS_SETTINGS}


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    text = (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load(name: str) -> dict:
    return yaml.safe_load((COMPOSE / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_compose_files_match_the_compose_specification(validator, name):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load(name))]
    assert not errors, errors


def test_schema_check_is_not_vacuous(validator):
    for mutate in (lambda d: d["services"]["cachefs"].update(devices="/dev/fuse"),
                   lambda d: d["services"]["tng"].update(cap_add="NET_ADMIN"),
                   lambda d: d["services"]["cachefs"]["depends_on"]["confidential-data-hub"].update(
                       condition="when_ready"),
                   lambda d: d["services"]["attestation-agent"].update(contaner_name="x")):
        doc = copy.deepcopy(load("docker-compose.yml"))
        mutate(doc)
        assert list(validator.iter_errors(doc)), "the schema accepted a broken file"


def test_services_names_health_and_order():
    services = load("docker-compose.yml")["services"]
    assert sorted(s["container_name"] for s in services.values()) == sorted(SIDECARS)
    by_container = {s["container_name"]: s for s in services.values()}
    health = {name: s["healthcheck"]["test"] for name, s in by_container.items()}
    # Healthy means the daemon's own /readyz says ready, on the socket the daemon listens on by default.
    assert health["cai-sidecar-attestation-agent"] == ["CMD", "cai", "healthcheck", "-q", AA_SOCKET]
    assert health["cai-sidecar-confidential-data-hub"] == ["CMD", "cai", "healthcheck", "-q", CDH_SOCKET]
    cachefs_socket = next(s.default for s in CACHEFS_SETTINGS if s.name == "socket")
    assert health["cai-sidecar-cachefs"] == ["CMD", "cai", "healthcheck", "-q", cachefs_socket]
    tng = by_container["cai-sidecar-tng"]
    listen = tng["command"][tng["command"].index("--control-listen") + 1]
    assert health["cai-sidecar-tng"] == ["CMD", "cai", "healthcheck", "-q", listen]
    assert services["confidential-data-hub"]["depends_on"] == {"attestation-agent": {"condition": "service_healthy"}}
    assert services["cachefs"]["depends_on"] == {"confidential-data-hub": {"condition": "service_healthy"}}
    assert services["tng"]["depends_on"] == {"attestation-agent": {"condition": "service_healthy"}}
    for service in services.values():
        assert service["env_file"] == [{"path": "${CAI_ENV_FILE:-../cai.env}", "required": True}]
        assert "cai-run:/run/cai" in service["volumes"]
        assert service["cap_drop"] == ["ALL"]


def test_privileges_devices_and_shared_tmpfs():
    doc = load("docker-compose.yml")
    services = doc["services"]
    run = doc["volumes"]["cai-run"]["driver_opts"]
    assert run["type"] == "tmpfs" and run["device"] == "tmpfs"
    cachefs = services["cachefs"]
    assert cachefs["cap_add"] == ["SYS_ADMIN"] and cachefs["devices"] == ["/dev/fuse:/dev/fuse"]
    assert "apparmor:unconfined" in cachefs["security_opt"]
    model = [v for v in cachefs["volumes"] if isinstance(v, dict) and v["target"].startswith("${MODEL_MOUNT_POINT")]
    assert model and model[0]["bind"]["propagation"] == "rshared"
    tng = services["tng"]
    assert tng["network_mode"] == "host" and set(tng["cap_add"]) == {"NET_ADMIN", "NET_RAW"}
    aa = services["attestation-agent"]
    assert aa["network_mode"] == "host"  # api-server-rest on the host's 127.0.0.1:8006
    binds = {v["source"]: v for v in aa["volumes"] if isinstance(v, dict)}
    assert binds["/sys/kernel/config"]["target"] == "/sys/kernel/config"
    tables = binds["/sys/firmware/acpi/tables"]["target"]
    assert aa["environment"]["CAI_AA_TDX_CCEL_TABLE"] == f"{tables}/CCEL"
    gpu = load("docker-compose.gpu.yml")["services"]["attestation-agent"]
    assert gpu["environment"]["CAI_AA_GPU_RA_ENABLE"] == "true"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert load("docker-compose.tpm.yml")["services"]["attestation-agent"]["devices"] == ["/dev/tpmrm0:/dev/tpmrm0"]


def test_environment_keys_in_compose_are_read_by_a_daemon():
    known = _known_names()
    for name in FILES:
        for service in load(name)["services"].values():
            for key in service.get("environment", {}):
                assert key in known, f"{name}: {key} is read by no daemon"


# --------------------------------------------------------------------------- cai.env.example


def _known_names() -> set[str]:
    names = {s.name for s in CAI_ENV_SETTINGS}
    for section, schema in SECTIONS.items():
        names |= {f"CAI_{section}_{s.name.upper()}" for s in schema}
    return names


def _assignments(text: str) -> tuple[set[str], set[str]]:
    active, commented = set(), set()
    for line in text.splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=", line)
        if match:
            (commented if match.group(1) else active).add(match.group(2))
    return active, commented


def test_every_example_variable_is_read_by_a_daemon():
    active, commented = _assignments(EXAMPLE.read_text())
    unknown = (active | commented) - _known_names()
    assert not unknown, f"cai.env.example names variables no daemon reads: {sorted(unknown)}"


def test_every_cai_env_variable_is_in_the_example():
    active, _ = _assignments(EXAMPLE.read_text())
    missing = {s.name for s in CAI_ENV_SETTINGS} - active
    assert not missing, f"cai.env.example lacks {sorted(missing)}"


def test_example_parses_and_validates():
    values = load_env_file(EXAMPLE)
    parsed = load_cai_env(environ={}, env_file=EXAMPLE)
    assert parsed["TRUSTEE_URL"] == values["TRUSTEE_URL"]
    assert parsed["MODEL_MOUNT_POINT"] == "/tmp/model"
    assert parsed["MODEL_SERVICE_PORT"] == 8080
    assert parsed["MODEL_OSS_SECRET_ACCESS_KEY"] is None  # empty means unset (public-read buckets)
    # systemd's EnvironmentFile= keeps trailing comments as part of the value: there are none.
    for line in EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Z]", line):
            assert " #" not in line, line


def test_dockerfile_copies_every_package():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for pattern in packages:
        name = pattern.rstrip("*")
        assert f"COPY {name} ./{name}" in dockerfile, f"Dockerfile does not copy the {name} package"
    assert "FROM python:3.11-slim-bookworm" in dockerfile and 'ENTRYPOINT ["cai"]' in dockerfile
