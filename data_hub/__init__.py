"""Confidential data hub: secrets from one or more Trustees into ``/run/cai/resources``.

The inference app reads ``/run/cai/resources/alt-key``, cachefs reads ``model-key``. This package
maps resource URIs to Trustees, keeps one attested KBS session per Trustee (evidence comes from
the attestation agent's API), writes values atomically to a memory filesystem, refreshes them,
unseals CoCo sealed secrets and serves the CDH API.
"""
