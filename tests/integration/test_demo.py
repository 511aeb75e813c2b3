"""The README's first command: ``cai demo`` runs the chain to completion and reports every step."""

from __future__ import annotations

import re
import subprocess
import sys


def test_cai_demo_runs_every_step_successfully():
    result = subprocess.run([sys.executable, "-m", "agents.cli", "demo", "--timeout", "60"],
                            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    steps = re.findall(r"^\[(ok  |FAIL)\] (.+?)\s{2,}", out, re.MULTILINE)
    titles = [title for _, title in steps]
    assert all(mark == "ok  " for mark, _ in steps), out
    for expected in ("Trustee stand-ins", "encrypt an example model", "refuses the sample TEE",
                     "start `cai aa", "start `cai cdh`", "resources materialised", "start `cai cachefs`",
                     "read the model through the mount", "start `cai gateway`", "verifying client proxy",
                     "client request through the proxy", "plaintext client cannot", "stop the daemons"):
        assert any(expected in title for title in titles), f"missing step {expected!r}:\n{out}"
    assert "all steps succeeded" in out
    assert "token not shown" in out  # the report never prints the token itself
