"""Intel TDX evidence: pure parsers (quote, TD report, CCEL, AA event log) and thin I/O shells.

Pure modules (bytes in, values out): :mod:`quote`, :mod:`quote_verify`, :mod:`td_report`,
:mod:`ccel`, :mod:`aael`. I/O shells: :mod:`tsm` (configfs-tsm quote), :mod:`guest_device`
(``/dev/tdx_guest`` TD report), :mod:`rtmr` (sysfs RTMR registers), :mod:`runtime_log` (the
durable AA event log behind RTMR3). The attester that ties them together lives in
:mod:`attestation_agent.attesters.tdx`.
"""
