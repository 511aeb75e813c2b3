#!/usr/bin/env python3
"""Regenerate docs/configuration.md from the daemons' Setting schemas (``--check`` only compares)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.config_reference import cli

if __name__ == "__main__":
    sys.exit(cli())
