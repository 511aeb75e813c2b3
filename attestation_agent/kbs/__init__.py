"""Trustee KBS protocol: sans-IO message codecs (this package) and the async client (``client``)."""
