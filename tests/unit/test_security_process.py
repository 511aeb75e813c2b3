"""Security properties of the process itself: non-dumpable, no core files, no inline secrets, constant-time compares.

Each check runs where it can fail: hardening is observed in a fresh child interpreter (the
flag is per process), the argv check walks the real argparse parsers of every key-holding
daemon, and the comparison scan parses the real source tree.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY_HOLDERS = ("attestation_agent.daemon", "data_hub.daemon", "cachefs.daemon", "gateway.daemon")


def allow_cores() -> None:
    """preexec_fn: start the child with core files allowed, so zero afterwards proves the code set it."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True, preexec_fn=allow_cores)
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import ctypes, json, resource
libc = ctypes.CDLL(None, use_errno=True)
def state():
    return {"dumpable": libc.prctl(3, 0, 0, 0, 0), "core": list(resource.getrlimit(resource.RLIMIT_CORE))}
"""


def test_harden_process_turns_off_dumpable_and_core_files() -> None:
    result = run_child(PROBE + """
from agents.lifecycle import harden_process
before = state()
ok = harden_process()
print(json.dumps({"before": before, "after": state(), "ok": ok}))
""")
    assert result["before"]["dumpable"] == 1, "control: a fresh interpreter starts dumpable"
    assert result["before"]["core"][0] != 0, "control: core files allowed before hardening"
    assert result["ok"] is True
    assert result["after"]["dumpable"] == 0
    assert result["after"]["core"][0] == 0


def test_lifecycle_entry_hardens_the_daemon() -> None:
    result = run_child(PROBE + """
import asyncio
from agents.lifecycle import Lifecycle
async def main():
    before = state()
    async with Lifecycle("probe"):
        inside = state()
    return {"before": before, "inside": inside}
print(json.dumps(asyncio.run(main())))
""")
    assert result["before"]["dumpable"] == 1
    assert result["inside"]["dumpable"] == 0
    assert result["inside"]["core"][0] == 0


@pytest.mark.parametrize("module", KEY_HOLDERS)
def test_every_key_holding_daemon_runs_under_lifecycle(module: str) -> None:
    """harden_process() lives in Lifecycle.__aenter__, so a daemon that bypassed Lifecycle would stay dumpable."""
    source = inspect.getsource(importlib.import_module(module))
    assert "async with Lifecycle(" in source, f"{module} must run inside agents.lifecycle.Lifecycle"


SECRET_WORDS = ("password", "passphrase", "secret", "token", "key", "credential")
SAFE_SUFFIXES = ("file", "path", "dir", "socket", "id", "url", "type", "timeout", "interval", "format", "kid",
                 "cache", "name", "mode", "alg")


@pytest.mark.parametrize("module", (*KEY_HOLDERS, "data_hub.cli_get_resource", "attestation_agent.cli_attest"))
def test_no_option_takes_secret_material_on_the_command_line(module: str) -> None:
    """Anything in argv is world-readable in /proc/<pid>/cmdline: keys must come from files or the AA/CDH."""
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    for action in parser._actions:  # argparse has no public accessor for its options
        for flag in action.option_strings:
            words = flag.lstrip("-").lower().replace("_", "-").split("-")
            if any(w in SECRET_WORDS for w in words) and action.nargs != 0 and not isinstance(
                    action, argparse._StoreConstAction | argparse._StoreTrueAction | argparse._StoreFalseAction):
                assert words[-1] in SAFE_SUFFIXES, f"{module} option {flag} looks like it takes secret material inline"
    assert parser._actions, f"{module} defines no options?"


SECRET_NAME_PARTS = ("secret", "password", "passphrase", "master_key", "mac", "hmac", "auth_tag", "token")
# Names that contain a secret-ish word but hold public values (checked by hand; keep the list short).
PUBLIC_NAMES = {"token_type"}


def _names(node: ast.AST) -> list[str]:
    return [n.id if isinstance(n, ast.Name) else n.attr
            for n in ast.walk(node) if isinstance(n, ast.Name | ast.Attribute)]


def test_secret_values_are_never_compared_with_eq() -> None:
    """``==`` on bytes leaks the matching prefix length through timing; secrets go through hmac.compare_digest.

    Scans every project module for ``a == b`` / ``a != b`` where an operand is named like a secret,
    a MAC or a token. Comparisons against None, literals or len() are not secret comparisons.
    """
    offenders = []
    for package in ("agents", "attestation_agent", "data_hub", "cachefs", "gateway", "trustee_standin"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                    continue
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant | ast.Compare) for o in operands):
                    continue
                if any(name.isupper() for o in operands for name in _names(o)[:1]):
                    continue  # a module constant (a TLV tag, a version): public by construction
                if any(isinstance(o, ast.Call) and isinstance(o.func, ast.Name) and o.func.id in ("len", "type")
                       for o in operands):
                    continue
                for operand in operands:
                    leaf = _names(operand)[:1]
                    if not leaf:
                        continue
                    name = leaf[0].lower()
                    if name in PUBLIC_NAMES:
                        continue
                    if any(part in name.split("_") or name.endswith("_" + part) or name == part
                           for part in SECRET_NAME_PARTS):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "use hmac.compare_digest for secret comparisons:\n" + "\n".join(offenders)
