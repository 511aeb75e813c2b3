"""CAI sidecar suite: the runtime shared by every daemon, and the ``cai`` command."""

__version__ = "0.1.0"
