"""``cai inject``: add the four CAI sidecars to a Kubernetes Pod or workload manifest.

ACK-CAI users describe what they want in one pod annotation, ``caiOptions`` (JSON), and get the
attestation agent, data hub, cachefs and gateway sidecars wired to their inference container. This
command performs that injection offline (``cai inject deploy.yaml | kubectl apply -f -``), so the
result can be reviewed, committed and diffed.

The core is pure (:func:`parse_cai_options`, :func:`inject_document`): a dict in, a new dict out,
every problem a :class:`InjectError` naming the option or manifest path at fault. Reading and
writing YAML/JSON is the thin shell around it.

What the pod gets (see docs/deployment.md):

* native sidecars (``initContainers`` with ``restartPolicy: Always``, Kubernetes >= 1.29) in the order
  attestation agent → data hub → cachefs → gateway, each with a ``startupProbe`` running
  ``cai healthcheck``; Kubernetes starts the next one — and finally the application — only when the
  previous one is ready, so the model is mounted before the inference server starts;
* ``cai-run``: a memory-backed ``emptyDir`` at ``/run/cai`` (sockets and ``/run/cai/resources``;
  secrets never touch a disk), read-only in application containers (the RAG app reads ``alt-key``);
* ``cai-model``: the decrypted model, mounted ``Bidirectional`` in the (privileged) cachefs sidecar
  and ``HostToContainer`` read-only at the same path in every application container;
* the ciphertext volume named by ``cipher-text-volume`` (a PVC, or an existing pod volume) read-only
  in cachefs, and ``/dev/fuse`` from the host;
* for ``tdx-ra-enable``: configfs (``/sys/kernel/config``, for configfs-tsm quotes) and the ACPI tables
  (CCEL event log) from the host in the attestation agent.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import __version__, jsonutil, validators
from agents.errors import ConfigError

ANNOTATION = "caiOptions"

AA = "cai-sidecar-attestation-agent"
CDH = "cai-sidecar-confidential-data-hub"
CACHEFS = "cai-sidecar-cachefs"
TNG = "cai-sidecar-tng"
SIDECARS = (AA, CDH, CACHEFS, TNG)

VOLUME_RUN = "cai-run"
VOLUME_MODEL = "cai-model"
VOLUME_FUSE = "cai-dev-fuse"
VOLUME_CIPHER = "cai-cipher-text"
VOLUME_CONFIGFS = "cai-configfs"
VOLUME_ACPI = "cai-acpi-tables"

RUN_DIR = "/run/cai"
CIPHER_DIR = "/var/lib/cai/cipher-text"
DEFAULT_MOUNT_POINT = "/tmp/model"  # noqa: S108 - the deployment guides' MODEL_MOUNT_POINT
DEFAULT_IMAGE = "cai-sidecars"
GATEWAY_CONTROL = "127.0.0.1:8007"
HOST_ACPI_TABLES = "/host/sys/firmware/acpi/tables"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

#: caiOptions key → the sidecar whose image tag it selects.
VERSION_KEYS = {"aa-version": AA, "cdh-version": CDH, "tng-version": TNG, "cachefs-version": CACHEFS}
KNOWN_KEYS = ("cipher-text-volume", "model-decryption-key-id", "trustee-address", *VERSION_KEYS,
              "tdx-ra-enable", "gpu-ra-enable", "tng-http-secure-ports")
REQUIRED_KEYS = ("cipher-text-volume", "model-decryption-key-id", "trustee-address", "tng-http-secure-ports")

# RFC 1123 label (volume and claim names) and the Docker tag grammar (image versions).
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_RE = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


class InjectError(ConfigError):
    """The manifest or its caiOptions cannot be injected; the message names the key or path."""


@dataclass(frozen=True)
class CaiOptions:
    """The validated ``caiOptions`` annotation."""

    cipher_text_volume: str
    model_key_id: str
    trustee_address: str
    secure_ports: tuple[int, ...]
    tdx_ra_enable: bool = True
    gpu_ra_enable: bool = False
    versions: Mapping[str, str] = field(default_factory=dict)  # sidecar name → image tag


@dataclass(frozen=True)
class InjectOptions:
    """Choices that are not in caiOptions (command-line options of ``cai inject``)."""

    image: str = DEFAULT_IMAGE
    default_version: str = __version__
    model_mount_point: str = DEFAULT_MOUNT_POINT
    native_sidecars: bool = True
    env_from_secret: str | None = None
    env_from_configmap: str | None = None
    annotation: str | None = None  # None: "caiOptions" or any "<prefix>/caiOptions"


# --------------------------------------------------------------------------- caiOptions


def _bool_option(value: Any, key: str) -> bool:
    # Annotation JSON is hand-written; "true"/"false" strings are as common as JSON booleans.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InjectError(f"caiOptions: {key!r} must be true or false, got {json.dumps(value)}")


def _str_option(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InjectError(f"caiOptions: {key!r} must be a non-empty string, got {json.dumps(value)}")
    return value.strip()


def _ports_option(value: Any) -> tuple[int, ...]:
    key = "tng-http-secure-ports"
    example = 'e.g. [{"port": 8080}]'
    if not isinstance(value, list) or not value:
        raise InjectError(f"caiOptions: {key!r} must be a non-empty list of {{\"port\": N}} objects, {example}")
    ports: list[int] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"port"}:
            raise InjectError(f"caiOptions: {key}[{i}] must be an object with exactly one key 'port', {example}")
        port = item["port"]
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        try:
            validators.port(port)
        except ValueError:
            raise InjectError(f"caiOptions: {key}[{i}].port must be a port number 1..65535, "
                              f"got {json.dumps(item['port'])}") from None
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def parse_cai_options(value: Any) -> CaiOptions:
    """Validate the annotation (its JSON text, or the parsed object); every key is checked."""
    if isinstance(value, str):
        try:
            value = jsonutil.loads(value)
        except ValueError as exc:
            raise InjectError(f"caiOptions is not valid JSON: {exc}",
                              hint='write it as a JSON object, e.g. {"trustee-address": "http://..."}') from None
    if not isinstance(value, dict):
        raise InjectError(f"caiOptions must be a JSON object, got {type(value).__name__}")
    for key in value:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(KNOWN_KEYS)
            raise InjectError(f"caiOptions: unknown key {key!r}", hint=hint)
    missing = [key for key in REQUIRED_KEYS if key not in value]
    if missing:
        raise InjectError(f"caiOptions: missing required key {missing[0]!r}",
                          hint="required: " + ", ".join(REQUIRED_KEYS))
    volume = _str_option(value["cipher-text-volume"], "cipher-text-volume")
    if not _CLAIM_RE.match(volume):
        raise InjectError(f"caiOptions: 'cipher-text-volume' {volume!r} is not a valid volume or "
                          "PersistentVolumeClaim name (lowercase letters, digits, '-', '.')")
    key_id = _str_option(value["model-decryption-key-id"], "model-decryption-key-id")
    trustee = _str_option(value["trustee-address"], "trustee-address")
    for option, check, what in (("model-decryption-key-id", validators.kbs_uri, key_id),
                                ("trustee-address", validators.http_url, trustee)):
        try:
            check(what)
        except ValueError as exc:
            raise InjectError(f"caiOptions: {option!r}: {exc}") from None
    versions: dict[str, str] = {}
    for key, sidecar in VERSION_KEYS.items():
        if key in value:
            tag = _str_option(value[key], key)
            if not _TAG_RE.match(tag):
                raise InjectError(f"caiOptions: {key!r} {tag!r} is not a valid image tag "
                                  "(letters, digits, '_', '.', '-'; at most 128)")
            versions[sidecar] = tag
    return CaiOptions(
        cipher_text_volume=volume,
        model_key_id=key_id,
        trustee_address=trustee,
        secure_ports=_ports_option(value["tng-http-secure-ports"]),
        tdx_ra_enable=_bool_option(value.get("tdx-ra-enable", True), "tdx-ra-enable"),
        gpu_ra_enable=_bool_option(value.get("gpu-ra-enable", False), "gpu-ra-enable"),
        versions=versions,
    )


# --------------------------------------------------------------------------- manifest


def _annotations(meta: Any, where: str) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InjectError(f"{where}.metadata must be an object")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InjectError(f"{where}.metadata.annotations must be an object of strings")
    return annotations


def _find_annotation(annotations: Mapping[str, Any], key: str | None) -> tuple[str, Any] | None:
    if key is not None:
        return (key, annotations[key]) if key in annotations else None
    found = [(k, v) for k, v in annotations.items() if k == ANNOTATION or k.endswith("/" + ANNOTATION)]
    if len(found) > 1:
        raise InjectError(f"two caiOptions annotations: {found[0][0]!r} and {found[1][0]!r}",
                          hint="keep one, or name it with --annotation")
    return found[0] if found else None


def locate(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(path of the pod spec, the pod spec, the metadata objects to search for caiOptions)."""
    kind = doc.get("kind")
    if kind == "Pod":
        spec = doc.get("spec")
        metas = [doc.get("metadata")]
        where = "spec"
    elif kind in _TEMPLATE_KINDS:
        template = (doc.get("spec") or {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if not isinstance(template, dict):
            raise InjectError(f"{kind} has no spec.template (the pod template)")
        spec = template.get("spec")
        metas = [template.get("metadata"), doc.get("metadata")]
        where = "spec.template.spec"
    else:
        raise InjectError(f"cannot inject into kind {kind!r}",
                          hint="give a Pod or a Deployment, StatefulSet, DaemonSet, ReplicaSet or Job")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError(f"{kind}: {where}.containers must be a non-empty list")
    return where, spec, [m for m in metas if m is not None]


def find_cai_options(doc: Mapping[str, Any], annotation: str | None = None) -> Any | None:
    """The raw caiOptions value of a Pod/workload document, or None if it has none."""
    _, _, metas = locate(doc)
    values = []
    for i, meta in enumerate(metas):
        hit = _find_annotation(_annotations(meta, "template" if i == 0 and len(metas) > 1 else "document"),
                               annotation)
        if hit is not None:
            values.append(hit[1])
    if len(values) == 2 and values[0] != values[1]:
        raise InjectError("caiOptions differs between the pod template and the workload metadata",
                          hint="keep it on the pod template (spec.template.metadata.annotations)")
    return values[0] if values else None


def _env(items: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in items.items()]


def _probe_exec(target: str, *extra: str) -> list[str]:
    return ["cai", "healthcheck", "-q", target, *extra]


def _sidecar(name: str, image: str, args: list[str], env: Mapping[str, str], mounts: list[dict[str, Any]],
             health: str, security: dict[str, Any], options: InjectOptions, *, startup_seconds: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
    }
    if env:
        container["env"] = _env(env)
    env_from = []
    if options.env_from_configmap:
        env_from.append({"configMapRef": {"name": options.env_from_configmap}})
    if options.env_from_secret:
        env_from.append({"secretRef": {"name": options.env_from_secret}})
    if env_from:
        container["envFrom"] = env_from
    container["volumeMounts"] = mounts
    container["securityContext"] = security
    container["startupProbe"] = {"exec": {"command": _probe_exec(health)}, "periodSeconds": 2,
                                 "timeoutSeconds": 5, "failureThreshold": max(1, startup_seconds // 2)}
    container["livenessProbe"] = {"exec": {"command": _probe_exec(health, "--path", "/livez")},
                                  "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
    if options.native_sidecars:
        container["restartPolicy"] = "Always"
    return container


def build_sidecars(cai: CaiOptions, options: InjectOptions, cipher_volume: str) -> list[dict[str, Any]]:
    """The four sidecar containers, in start order."""

    def image(sidecar: str) -> str:
        return f"{options.image}:{cai.versions.get(sidecar, options.default_version)}"

    run_mount = {"name": VOLUME_RUN, "mountPath": RUN_DIR}
    dropped: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    aa_env = {"TRUSTEE_URL": cai.trustee_address, "CAI_AA_TEE": "tdx" if cai.tdx_ra_enable else "auto",
              "CAI_AA_GPU_RA_ENABLE": "true" if cai.gpu_ra_enable else "false"}
    aa_mounts = [dict(run_mount)]
    aa_security = copy.deepcopy(dropped)
    if cai.tdx_ra_enable:
        # Container runtimes mask /sys/firmware, so the ACPI tables (CCEL) go elsewhere and the
        # attester is told where; configfs keeps its path because TEE detection probes it there.
        aa_mounts += [{"name": VOLUME_CONFIGFS, "mountPath": "/sys/kernel/config"},
                      {"name": VOLUME_ACPI, "mountPath": HOST_ACPI_TABLES, "readOnly": True}]
        aa_env["CAI_AA_TDX_CCEL_TABLE"] = f"{HOST_ACPI_TABLES}/CCEL"
        aa_env["CAI_AA_TDX_CCEL_DATA"] = f"{HOST_ACPI_TABLES}/data/CCEL"
    if cai.gpu_ra_enable:
        # The NVIDIA container runtime exposes the GPUs to a container that asks by environment;
        # setting the confidential-computing ready state through NVML is an administrator operation.
        aa_env["NVIDIA_VISIBLE_DEVICES"] = "all"
        aa_security["capabilities"]["add"] = ["SYS_ADMIN"]

    cachefs_env = {"MODEL_MOUNT_POINT": options.model_mount_point, "CAI_CACHEFS_CIPHER_DIR": CIPHER_DIR}
    cachefs_mounts = [dict(run_mount),
                      {"name": VOLUME_MODEL, "mountPath": options.model_mount_point,
                       "mountPropagation": "Bidirectional"},
                      {"name": cipher_volume, "mountPath": CIPHER_DIR, "readOnly": True},
                      {"name": VOLUME_FUSE, "mountPath": "/dev/fuse"}]

    ports = json.dumps({"tng-http-secure-ports": [{"port": p} for p in cai.secure_ports]}, separators=(",", ":"))
    tng_args = ["gateway", "--capture", "netfilter", "--aa-socket", f"{RUN_DIR}/aa.sock",
                "--cai-options", ports, "--control-listen", GATEWAY_CONTROL]
    tng_security = {"allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}}

    return [
        _sidecar(AA, image(AA), ["aa"], aa_env, aa_mounts, f"{RUN_DIR}/aa.sock", aa_security, options,
                 startup_seconds=120),
        _sidecar(CDH, image(CDH), ["cdh"], {"TRUSTEE_URL": cai.trustee_address, "MODEL_KEY_ID": cai.model_key_id},
                 [dict(run_mount)], f"{RUN_DIR}/cdh.sock", copy.deepcopy(dropped), options, startup_seconds=900),
        # Bidirectional mount propagation is only allowed in privileged containers (FUSE mount → app).
        _sidecar(CACHEFS, image(CACHEFS), ["cachefs"], cachefs_env, cachefs_mounts, f"{RUN_DIR}/cachefs.sock",
                 {"privileged": True}, options, startup_seconds=900),
        _sidecar(TNG, image(TNG), tng_args, {}, [dict(run_mount)], GATEWAY_CONTROL, tng_security, options,
                 startup_seconds=300),
    ]


def _check_mounts(container: Mapping[str, Any], where: str, paths: tuple[str, ...]) -> None:
    for mount in container.get("volumeMounts") or []:
        if isinstance(mount, dict) and mount.get("mountPath") in paths:
            raise InjectError(f"{where} already mounts something at {mount['mountPath']}",
                              hint="the injector mounts the decrypted model and /run/cai there; remove that mount "
                                   "or choose another --model-mount-point")


def inject_pod_spec(spec: dict[str, Any], cai: CaiOptions, options: InjectOptions, where: str) -> None:
    """Add sidecars, volumes and application mounts to ``spec`` in place."""
    containers = spec["containers"]
    init = spec.get("initContainers") or []
    if not isinstance(init, list):
        raise InjectError(f"{where}.initContainers must be a list")
    for i, container in enumerate([*containers, *init]):
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise InjectError(f"{where}: container #{i} must be an object with a name")
        if container["name"] in SIDECARS:
            raise InjectError(f"{where} already has a container named {container['name']!r}",
                              hint="the manifest was injected already; inject the original manifest")
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes):
        raise InjectError(f"{where}.volumes must be a list of objects")
    names = {v.get("name") for v in volumes}
    ours = {VOLUME_RUN, VOLUME_MODEL, VOLUME_FUSE, VOLUME_CONFIGFS, VOLUME_ACPI}
    clash = sorted(n for n in names & ours if isinstance(n, str))
    if clash:
        raise InjectError(f"{where}.volumes already has a volume named {clash[0]!r}",
                          hint="the injector adds volumes named " + ", ".join(sorted(ours)))
    cipher_volume = cai.cipher_text_volume
    if cipher_volume not in names:
        # Not a volume of the pod: it names a PersistentVolumeClaim holding the ciphertext.
        if VOLUME_CIPHER in names:
            raise InjectError(f"{where}.volumes already has a volume named {VOLUME_CIPHER!r}")
        volumes.append({"name": VOLUME_CIPHER,
                        "persistentVolumeClaim": {"claimName": cai.cipher_text_volume, "readOnly": True}})
        cipher_volume = VOLUME_CIPHER
    volumes += [
        {"name": VOLUME_RUN, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": VOLUME_MODEL, "emptyDir": {}},
        {"name": VOLUME_FUSE, "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}},
    ]
    if cai.tdx_ra_enable:
        volumes += [{"name": VOLUME_CONFIGFS, "hostPath": {"path": "/sys/kernel/config", "type": "Directory"}},
                    {"name": VOLUME_ACPI, "hostPath": {"path": "/sys/firmware/acpi/tables", "type": "Directory"}}]
    spec["volumes"] = volumes
    for i, container in enumerate(containers):
        _check_mounts(container, f"{where}.containers[{i}] ({container['name']})",
                      (options.model_mount_point, RUN_DIR))
        mounts = container.get("volumeMounts") or []
        if not isinstance(mounts, list):
            raise InjectError(f"{where}.containers[{i}].volumeMounts must be a list")
        container["volumeMounts"] = [*mounts,
                                     {"name": VOLUME_MODEL, "mountPath": options.model_mount_point,
                                      "readOnly": True, "mountPropagation": "HostToContainer"},
                                     {"name": VOLUME_RUN, "mountPath": RUN_DIR, "readOnly": True}]
    sidecars = build_sidecars(cai, options, cipher_volume)
    if options.native_sidecars:
        spec["initContainers"] = [*sidecars, *init]
    else:
        spec["containers"] = [*containers, *sidecars]


def check_options(options: InjectOptions) -> None:
    """Validate the command-line choices (they end up in the manifest too)."""
    if not _IMAGE_RE.match(options.image):
        raise InjectError(f"--image {options.image!r} is not an image name (registry/path, no tag)")
    if not _TAG_RE.match(options.default_version):
        raise InjectError(f"--version {options.default_version!r} is not a valid image tag")
    try:
        validators.absolute_path(options.model_mount_point)
    except ValueError as exc:
        raise InjectError(f"--model-mount-point: {exc}") from None
    if options.model_mount_point.rstrip("/") in ("", RUN_DIR) or options.model_mount_point.startswith(RUN_DIR + "/"):
        raise InjectError(f"--model-mount-point {options.model_mount_point!r} must lie outside {RUN_DIR}")
    for flag, name in (("--env-from-secret", options.env_from_secret),
                       ("--env-from-configmap", options.env_from_configmap)):
        if name is not None and not _CLAIM_RE.match(name):
            raise InjectError(f"{flag} {name!r} is not a valid Kubernetes object name")


def inject_document(doc: Mapping[str, Any], options: InjectOptions = InjectOptions()) -> dict[str, Any] | None:
    """A copy of ``doc`` with the sidecars added, or None if it has no caiOptions annotation."""
    if not isinstance(doc, dict):
        raise InjectError(f"a manifest document must be an object, got {type(doc).__name__}")
    check_options(options)
    raw = find_cai_options(doc, options.annotation)
    if raw is None:
        return None
    cai = parse_cai_options(raw)
    out = copy.deepcopy(doc)
    where, spec, _ = locate(out)
    inject_pod_spec(spec, cai, options, where)
    return out


def inject_documents(docs: list[Any], options: InjectOptions = InjectOptions()) -> list[Any]:
    """Inject every document that carries caiOptions (``kind: List`` items too); pass others through."""
    out: list[Any] = []
    injected = 0
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InjectError(f"document {index + 1} is not an object")
        try:
            if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                items = []
                for item in doc["items"]:
                    new = inject_document(item, options) if _injectable(item) else None
                    injected += new is not None
                    items.append(new if new is not None else item)
                out.append({**doc, "items": items})
                continue
            new = inject_document(doc, options) if _injectable(doc) else None
        except InjectError as exc:
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
            label = f"{doc.get('kind')}/{name}" if name else f"document {index + 1}"
            raise InjectError(f"{label}: {exc.message}", hint=exc.hint) from None
        injected += new is not None
        out.append(new if new is not None else doc)
    if not injected:
        raise InjectError("no Pod or workload with a caiOptions annotation was found",
                          hint="add metadata.annotations.caiOptions (JSON) to the pod template")
    return out


def _injectable(doc: Any) -> bool:
    return isinstance(doc, dict) and (doc.get("kind") == "Pod" or doc.get("kind") in _TEMPLATE_KINDS)


# --------------------------------------------------------------------------- reading and writing


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise InjectError("reading or writing YAML needs PyYAML", hint="pip install pyyaml, or give JSON") from None
    return yaml


def load_documents(text: str) -> tuple[list[Any], str]:
    """Parse a manifest: JSON (one object) or YAML (one or more documents). Returns (docs, format)."""
    if len(text.encode("utf-8", "replace")) > MAX_MANIFEST_BYTES:
        raise InjectError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    if text.lstrip().startswith(("{", "[")):
        try:
            value = jsonutil.loads(text)
        except ValueError as exc:
            raise InjectError(f"manifest is not valid JSON: {exc}") from None
        return (value if isinstance(value, list) else [value]), "json"
    yaml = _yaml()
    try:
        # Aliases expand into shared objects that a JSON writer would copy out exponentially.
        if any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text, Loader=yaml.SafeLoader)):
            raise InjectError("manifest YAML uses aliases (*name); write the values out")
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InjectError(f"manifest is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise InjectError("manifest YAML is nested too deeply") from None
    return docs, "yaml"


def dump_documents(docs: list[Any], fmt: str) -> str:
    """JSON (one document, or a JSON list) or YAML documents separated by ``---``."""
    if fmt == "json":
        return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n"
    yaml = _yaml()

    class _Dumper(yaml.SafeDumper):
        """Keeps multi-line strings (the caiOptions JSON) as readable ``|`` blocks."""

    def _str(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value and not value.startswith((" ", "\n")) and "\t" not in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return str(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="FILE|-", help="Pod or Deployment manifest (YAML or JSON); - for stdin")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), help="output format (default: the input's)")
    parser.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"sidecar image without tag (default {DEFAULT_IMAGE}); caiOptions *-version keys "
                             "choose each sidecar's tag")
    parser.add_argument("--version", dest="default_version", default=__version__,
                        help=f"image tag for sidecars whose *-version key is absent (default {__version__})")
    parser.add_argument("--model-mount-point", default=DEFAULT_MOUNT_POINT,
                        help=f"where the decrypted model appears in every container (default {DEFAULT_MOUNT_POINT})")
    parser.add_argument("--annotation", help="annotation holding the options (default: caiOptions or */caiOptions)")
    parser.add_argument("--env-from-secret", metavar="NAME",
                        help="Secret with further cai.env variables for every sidecar (e.g. MODEL_OSS_*, ALT_*)")
    parser.add_argument("--env-from-configmap", metavar="NAME", help="ConfigMap with further cai.env variables")
    parser.add_argument("--legacy-sidecars", action="store_true",
                        help="add the sidecars to containers (Kubernetes < 1.29; no start ordering)")


def main(args: argparse.Namespace) -> int:
    options = InjectOptions(image=args.image, default_version=args.default_version,
                            model_mount_point=args.model_mount_point, native_sidecars=not args.legacy_sidecars,
                            env_from_secret=args.env_from_secret, env_from_configmap=args.env_from_configmap,
                            annotation=args.annotation)
    source = "stdin" if args.manifest == "-" else args.manifest
    try:
        if args.manifest == "-":
            text = sys.stdin.read(MAX_MANIFEST_BYTES + 1)
        else:
            with open(args.manifest, encoding="utf-8") as f:
                text = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        print(f"cai inject: cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"cai inject: {source} is not UTF-8 text", file=sys.stderr)
        return 1
    try:
        docs, fmt = load_documents(text)
        out = dump_documents(inject_documents(docs, options), args.output or fmt)
    except InjectError as exc:
        print(f"cai inject: {source}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0
