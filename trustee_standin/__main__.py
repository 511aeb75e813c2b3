"""``python -m trustee_standin`` — the development/test-only Trustee stand-in CLI."""

from __future__ import annotations

import sys

from trustee_standin.server import main

sys.exit(main())
