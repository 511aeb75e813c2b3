"""``cai inject``: golden file, Kubernetes schema validation, every caiOptions key, clean errors."""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import inject
from agents.inject import (
    AA,
    CACHEFS,
    CDH,
    SIDECARS,
    TNG,
    InjectError,
    InjectOptions,
    dump_documents,
    inject_document,
    inject_documents,
    load_documents,
    parse_cai_options,
)
from attestation_agent.config import AA_SETTINGS
from cachefs.daemon import CACHEFS_SETTINGS
from data_hub.config import CDH_SETTINGS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "compose" / "k8s" / "vllm-deployment.yaml"
GOLDEN = REPO / "compose" / "k8s" / "vllm-deployment.injected.yaml"
K8S_VERSION = "1.30.0"  # native sidecars (restartPolicy on init containers) are GA from 1.29

OPTIONS = {
    "cipher-text-volume": "pvc-model",
    "model-decryption-key-id": "kbs:///default/aliyun/model-decryption-key",
    "trustee-address": "http://192.0.2.10:8081/api",
    "tng-http-secure-ports": [{"port": 8080}],
}


def pod(options: dict | str | None = None, **spec_extra) -> dict:
    meta: dict = {"name": "app"}
    if options is not None:
        meta["annotations"] = {"caiOptions": options if isinstance(options, str) else json.dumps(options)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec_extra}}


def containers(doc: dict) -> dict[str, dict]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def validate_k8s(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def run_main(argv: list[str], stdin: str = "", capsys=None, monkeypatch=None) -> int:
    parser = argparse.ArgumentParser()
    inject.add_arguments(parser)
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return inject.main(parser.parse_args(argv))


# --------------------------------------------------------------------------- the example and its golden file


def test_example_matches_golden_file_and_validates(capsys):
    assert run_main([str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out == GOLDEN.read_text(), (
        "compose/k8s/vllm-deployment.injected.yaml is stale: regenerate it with "
        "`cai inject compose/k8s/vllm-deployment.yaml > compose/k8s/vllm-deployment.injected.yaml`")
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        validate_k8s(doc)
    # The Service passes through untouched.
    assert docs[1] == list(yaml.safe_load_all(EXAMPLE.read_text()))[1]


def test_example_sidecars_volumes_and_env_match_cai_options():
    original = next(iter(yaml.safe_load_all(EXAMPLE.read_text())))
    cai = json.loads(original["spec"]["template"]["metadata"]["annotations"]["caiOptions"])
    doc = inject_documents([original])[0]
    spec = doc["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [AA, CDH, CACHEFS, TNG]
    assert all(c["restartPolicy"] == "Always" and "startupProbe" in c for c in spec["initContainers"])
    by_name = containers(doc)
    assert env(by_name[AA])["TRUSTEE_URL"] == cai["trustee-address"]
    assert env(by_name[AA])["CAI_AA_TEE"] == "tdx"
    assert env(by_name[AA])["CAI_AA_GPU_RA_ENABLE"] == "true"
    assert env(by_name[CDH]) == {"TRUSTEE_URL": cai["trustee-address"], "MODEL_KEY_ID": cai["model-decryption-key-id"]}
    for key, sidecar in inject.VERSION_KEYS.items():
        assert by_name[sidecar]["image"].endswith(":" + cai[key])
    args = by_name[TNG]["args"]
    assert json.loads(args[args.index("--cai-options") + 1]) == {"tng-http-secure-ports": cai["tng-http-secure-ports"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cai-run"]["emptyDir"]["medium"] == "Memory"
    assert volumes["cai-cipher-text"]["persistentVolumeClaim"]["claimName"] == cai["cipher-text-volume"]
    assert volumes["cai-dev-fuse"]["hostPath"]["path"] == "/dev/fuse"
    mounts = {m["name"]: m for m in by_name[CACHEFS]["volumeMounts"]}
    assert mounts["cai-model"]["mountPropagation"] == "Bidirectional"
    assert by_name[CACHEFS]["securityContext"]["privileged"] is True  # required by Bidirectional
    app = {m["name"]: m for m in by_name["vllm"]["volumeMounts"]}
    assert app["cai-model"] == {"name": "cai-model", "mountPath": "/tmp/model", "readOnly": True,
                                "mountPropagation": "HostToContainer"}
    assert app["cai-run"]["readOnly"] is True and app["cai-run"]["mountPath"] == "/run/cai"
    # The original document is not modified.
    assert "initContainers" not in original["spec"]["template"]["spec"]


def test_probes_ask_each_daemon_on_its_default_socket():
    from attestation_agent.config import DEFAULT_SOCKET as AA_SOCKET
    from data_hub.config import DEFAULT_SOCKET as CDH_SOCKET

    cachefs_socket = next(s.default for s in CACHEFS_SETTINGS if s.name == "socket")
    by_name = containers(inject_document(pod(OPTIONS)))
    for sidecar, target in ((AA, AA_SOCKET), (CDH, CDH_SOCKET), (CACHEFS, cachefs_socket),
                            (TNG, inject.GATEWAY_CONTROL)):
        assert by_name[sidecar]["startupProbe"]["exec"]["command"] == ["cai", "healthcheck", "-q", target]
        assert by_name[sidecar]["livenessProbe"]["exec"]["command"][-2:] == ["--path", "/livez"]
    args = by_name[TNG]["args"]
    assert args[args.index("--control-listen") + 1] == inject.GATEWAY_CONTROL


def test_sidecar_environment_names_are_settings_the_daemons_read():
    from agents.config import CAI_ENV_SETTINGS

    known = {s.name for s in CAI_ENV_SETTINGS}
    for section, schema in (("AA", AA_SETTINGS), ("CDH", CDH_SETTINGS), ("CACHEFS", CACHEFS_SETTINGS)):
        known |= {f"CAI_{section}_{s.name.upper()}" for s in schema}
    doc = inject_document(pod({**OPTIONS, "gpu-ra-enable": True}))
    for name, container in containers(doc).items():
        if name in SIDECARS:
            unknown = set(env(container)) - known - {"NVIDIA_VISIBLE_DEVICES"}
            assert not unknown, f"{name} sets variables no daemon reads: {unknown}"


# --------------------------------------------------------------------------- each caiOptions key


def test_minimal_options_defaults_and_legacy_mode_validate():
    doc = inject_document(pod(OPTIONS))
    validate_k8s(doc)
    by_name = containers(doc)
    assert env(by_name[AA])["CAI_AA_TEE"] == "tdx"  # tdx-ra-enable defaults to true: fail closed
    assert env(by_name[AA])["CAI_AA_GPU_RA_ENABLE"] == "false"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(by_name[AA])
    assert all(by_name[s]["image"] == f"cai-sidecars:{inject.__version__}" for s in SIDECARS)
    legacy = inject_document(pod(OPTIONS), InjectOptions(native_sidecars=False))
    validate_k8s(legacy)
    assert [c["name"] for c in legacy["spec"]["containers"]] == ["app", AA, CDH, CACHEFS, TNG]
    assert "initContainers" not in legacy["spec"]
    assert all("restartPolicy" not in c for c in legacy["spec"]["containers"])


def test_tdx_disabled_drops_host_mounts_gpu_enabled_adds_devices():
    doc = inject_document(pod({**OPTIONS, "tdx-ra-enable": "false", "gpu-ra-enable": "true"}))
    validate_k8s(doc)
    aa = containers(doc)[AA]
    assert env(aa)["CAI_AA_TEE"] == "auto"
    assert env(aa)["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert aa["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    names = {v["name"] for v in doc["spec"]["volumes"]}
    assert "cai-configfs" not in names and "cai-acpi-tables" not in names
    assert {m["name"] for m in aa["volumeMounts"]} == {"cai-run"}


def test_cipher_text_volume_naming_an_existing_pod_volume_is_reused():
    volume = {"name": "pvc-model", "persistentVolumeClaim": {"claimName": "other-claim"}}
    doc = inject_document(pod(OPTIONS, volumes=[volume]))
    validate_k8s(doc)
    names = [v["name"] for v in doc["spec"]["volumes"]]
    assert "cai-cipher-text" not in names and names.count("pvc-model") == 1
    mounts = {m["name"]: m for m in containers(doc)[CACHEFS]["volumeMounts"]}
    assert mounts["pvc-model"]["readOnly"] is True


def test_secure_ports_deduplicated_and_given_to_the_gateway():
    doc = inject_document(pod({**OPTIONS, "tng-http-secure-ports": [{"port": 8080}, {"port": "9000"},
                                                                   {"port": 8080}]}))
    args = containers(doc)[TNG]["args"]
    assert json.loads(args[args.index("--cai-options") + 1])["tng-http-secure-ports"] == [{"port": 8080},
                                                                                         {"port": 9000}]
    assert args[args.index("--capture") + 1] == "netfilter"
    assert set(containers(doc)[TNG]["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}


def test_annotation_on_deployment_metadata_and_prefixed_key():
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "d", "annotations": {"example.com/caiOptions": json.dumps(OPTIONS)}},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "app", "image": "x"}]}}}}
    doc = inject_document(deployment)
    validate_k8s(doc)
    assert [c["name"] for c in doc["spec"]["template"]["spec"]["initContainers"]] == list(SIDECARS)
    both = copy.deepcopy(deployment)
    both["spec"]["template"]["metadata"]["annotations"] = {"caiOptions": json.dumps({**OPTIONS, "aa-version": "2"})}
    with pytest.raises(InjectError, match="differs between the pod template and the workload"):
        inject_document(both)


def test_json_input_list_output_and_passthrough(capsys, monkeypatch):
    text = json.dumps({"apiVersion": "v1", "kind": "List",
                       "items": [pod(OPTIONS), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]})
    assert run_main(["-"], stdin=text, monkeypatch=monkeypatch) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in out["items"][0]["spec"]["initContainers"]] == list(SIDECARS)
    assert out["items"][1] == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    for item in out["items"]:
        validate_k8s(item)


def test_yaml_round_trip_keeps_values_typed():
    docs, fmt = load_documents(dump_documents([inject_document(pod(OPTIONS))], "yaml"))
    assert fmt == "yaml"
    assert env(containers(docs[0])[AA])["CAI_AA_GPU_RA_ENABLE"] == "false"  # stays a string
    validate_k8s(docs[0])


# --------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(("options", "match"), [
    ({**OPTIONS, "trustee-adress": "http://x"}, r"unknown key 'trustee-adress' — did you mean 'trustee-address'"),
    ({k: v for k, v in OPTIONS.items() if k != "model-decryption-key-id"},
     "missing required key 'model-decryption-key-id'"),
    ({**OPTIONS, "tdx-ra-enable": "yes"}, r"'tdx-ra-enable' must be true or false"),
    ({**OPTIONS, "gpu-ra-enable": 1}, r"'gpu-ra-enable' must be true or false"),
    ({**OPTIONS, "tng-http-secure-ports": [{"port": 0}]}, r"tng-http-secure-ports\[0\]\.port must be a port"),
    ({**OPTIONS, "tng-http-secure-ports": [8080]}, r"tng-http-secure-ports\[0\] must be an object"),
    ({**OPTIONS, "tng-http-secure-ports": []}, r"'tng-http-secure-ports' must be a non-empty list"),
    ({**OPTIONS, "aa-version": "1.0 beta"}, r"'aa-version' '1.0 beta' is not a valid image tag"),
    ({**OPTIONS, "cdh-version": 3}, r"'cdh-version' must be a non-empty string"),
    ({**OPTIONS, "model-decryption-key-id": "kbs:///only/two"}, r"'model-decryption-key-id': .*three path segments"),
    ({**OPTIONS, "trustee-address": "ftp://x"}, r"'trustee-address': .*not an http"),
    ({**OPTIONS, "cipher-text-volume": "Bad_Name"}, r"'cipher-text-volume' 'Bad_Name' is not a valid"),
    ("{not json", "caiOptions is not valid JSON"),
    ("[1, 2]", "caiOptions must be a JSON object"),
])
def test_invalid_options_name_the_key(options, match):
    with pytest.raises(InjectError, match=match):
        inject_document(pod(options))


def test_manifest_errors(capsys, monkeypatch, tmp_path):
    with pytest.raises(InjectError, match="no Pod or workload with a caiOptions annotation"):
        inject_documents([pod(None)])
    with pytest.raises(InjectError, match="cannot inject into kind 'Service'"):
        inject_document({"kind": "Service", "metadata": {"annotations": {"caiOptions": "{}"}}})
    injected = inject_document(pod(OPTIONS))
    with pytest.raises(InjectError, match="already has a container named 'cai-sidecar-attestation-agent'"):
        inject_document(injected)
    clash = pod(OPTIONS)
    clash["spec"]["containers"][0]["volumeMounts"] = [{"name": "x", "mountPath": "/tmp/model"}]
    with pytest.raises(InjectError, match=r"containers\[0\] \(app\) already mounts something at /tmp/model"):
        inject_document(clash)
    with pytest.raises(InjectError, match="already has a volume named 'cai-run'"):
        inject_document(pod(OPTIONS, volumes=[{"name": "cai-run", "emptyDir": {}}]))
    with pytest.raises(InjectError, match="--model-mount-point '/run/cai/m' must lie outside /run/cai"):
        inject_document(pod(OPTIONS), InjectOptions(model_mount_point="/run/cai/m"))
    with pytest.raises(InjectError, match="aliases"):
        load_documents("a: &x [1]\nb: *x\n")
    with pytest.raises(InjectError, match="not valid YAML at line 2"):
        load_documents("a: 1\n b: [\n")
    # The command reports the file and exits 2, without a traceback.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(pod({**OPTIONS, "tdx-ra-enable": "maybe"})))
    assert run_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cai inject: {bad}: Pod/app: caiOptions: 'tdx-ra-enable'") and "Traceback" not in err
    assert run_main([str(tmp_path / "missing.yaml")]) == 1


# --------------------------------------------------------------------------- fuzzing: only clean errors

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*inject.KNOWN_KEYS, "x", "port"]), _json, max_size=8))
def test_fuzz_options_only_clean_errors(raw):
    try:
        result = parse_cai_options({**OPTIONS, **raw})
    except InjectError as exc:
        assert exc.message.startswith("caiOptions")
        return
    assert result.secure_ports and all(1 <= p <= 65535 for p in result.secure_ports)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["kind", "metadata", "spec", "containers", "volumes", "annotations", "initContainers"]),
       _json)
def test_fuzz_manifest_mutations_only_clean_errors(where, value):
    doc = pod(OPTIONS)
    if where in ("kind", "metadata", "spec"):
        doc[where] = value
    elif where == "annotations":
        doc["metadata"]["annotations"] = value
    else:
        doc["spec"][where] = value
    try:
        out = inject_documents([doc])
    except InjectError:
        return
    assert {c["name"] for c in out[0]["spec"]["initContainers"]} >= set(SIDECARS)
