"""Test doubles for hardware interfaces that do not exist on CI machines (NVML, ...)."""
