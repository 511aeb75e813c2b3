"""docs/configuration.md is generated from the Setting schemas and must equal the generator's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agents import config_reference
from agents.config import CAI_ENV_SETTINGS
from attestation_agent.config import AA_SETTINGS
from cachefs.daemon import CACHEFS_SETTINGS
from data_hub.config import CDH_SETTINGS

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"


def test_committed_reference_equals_generator_output():
    assert DOC.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/configuration.md is out of date: run `python scripts/gen-config-reference.py` and commit it")


def test_every_setting_and_variable_is_documented():
    text = config_reference.render()
    for setting in CAI_ENV_SETTINGS:
        assert f"| `{setting.name}` |" in text
    for section, schema in (("aa", AA_SETTINGS), ("cdh", CDH_SETTINGS), ("cachefs", CACHEFS_SETTINGS)):
        assert f"## [{section}]" in text
        for setting in schema:
            assert f"| `{setting.name}` | `CAI_{section.upper()}_{setting.name.upper()}` |" in text
    assert "`--capture` `mapping\\|netfilter`" in text  # gateway options from its argparse parser
    secret_rows = [line for line in text.splitlines() if "MODEL_OSS_SECRET_ACCESS_KEY`" in line]
    assert secret_rows and "Secret: never logged" in secret_rows[0]


def test_rows_have_a_fixed_cell_count():
    # An unescaped '|' in a doc string would shift the columns of its table.
    widths = {"| Variable": 4, "| Key": 5, "| Option": 3}
    current = 0
    for line in config_reference.render().splitlines():
        for head, width in widths.items():
            if line.startswith(head):
                current = width
        if line.startswith("| ") and current:
            cells = line.replace("\\|", "").count("|") - 1
            assert cells == current, line


def test_script_check_mode(tmp_path):
    script = REPO / "scripts" / "gen-config-reference.py"
    ok = subprocess.run([sys.executable, str(script), "--check", "-o", str(DOC)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "configuration.md"
    stale.write_text(DOC.read_text() + "edited by hand\n")
    bad = subprocess.run([sys.executable, str(script), "--check", "-o", str(stale)], capture_output=True, text=True)
    assert bad.returncode == 1 and "out of date" in bad.stderr
    fresh = tmp_path / "fresh.md"
    subprocess.run([sys.executable, str(script), "-o", str(fresh)], check=True, capture_output=True)
    assert fresh.read_text() == DOC.read_text()
