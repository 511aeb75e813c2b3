"""TNG-compatible gateway: egress (in guest: rats-tls termination, mapping capture) and ingress
(client side: an HTTP proxy that verifies the TEE through a Trustee attestation service before any
request byte leaves)."""
