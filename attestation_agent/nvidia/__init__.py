"""NVIDIA GPU confidential-computing evidence: formats, verification and NVML access.

- :mod:`.spdm` — the SPDM 1.1 GET_MEASUREMENTS report NVML returns (pure parser).
- :mod:`.chain` — certificate-chain loading (PEM / base64 / DER) and path validation (pure).
- :mod:`.verify` — local verification of one report: chain, FWID, signature, nonce (pure).
- :mod:`.evidence` — the 0.4.0 ``nvidia`` and Trustee 1.5 ``gpu_evidence`` JSON shapes (pure).
- :mod:`.nvml` — blocking NVML calls over an injected ``pynvml``-compatible module.
- ``certs/`` — the NVIDIA Device Identity CA (provenance in ``certs/PROVENANCE.md``).

The attester built on these lives in :mod:`attestation_agent.attesters.nvidia`.
"""
