"""agents.jsonutil: the one JSON entry point for outside input."""

from __future__ import annotations

import ast
import json

import pytest

from agents import jsonutil
from tests.conftest import REPO

#: Modules allowed to call json.loads directly: the wrapper itself, and parsers of our own output.
DIRECT_OK = {"agents/jsonutil.py", "agents/demo.py", "gateway/verifier.py"}
PACKAGES = ("agents", "attestation_agent", "data_hub", "cachefs", "gateway", "trustee_standin")


def test_hostile_nesting_is_a_json_error() -> None:
    for doc in ("[" * 100_000, b'{"a":' * 100_000):
        with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
            jsonutil.loads(doc)
    with pytest.raises(ValueError):  # callers that catch ValueError are covered too
        jsonutil.loads("[" * 100_000)
    assert jsonutil.loads(b'{"a": [1, 2, {"b": null}]}') == {"a": [1, 2, {"b": None}]}
    nested: list = []
    for _ in range(49):
        nested = [nested]
    assert jsonutil.loads("[" * 50 + "]" * 50) == nested  # ordinary depth is fine


def test_product_code_parses_json_through_jsonutil() -> None:
    """A new parser that calls json.loads directly would let RecursionError escape on nested input."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in DIRECT_OK:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "loads"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"use agents.jsonutil.loads for outside JSON: {offenders}"
