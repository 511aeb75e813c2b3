"""Ciphertext sources: where cachefs fetches encrypted volume bytes from (local dir, object store)."""
