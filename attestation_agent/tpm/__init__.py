"""Pure (sans-IO) TPM 2.0 formats for the vTPM attester and the stand-in TPM verifier.

``attest`` parses and marshals TPMS_ATTEST, ``pcr`` knows PCR banks, selections and digests,
``evidence`` is the openanolis Trustee 1.5.2 ``tpm`` evidence JSON codec, ``verify`` holds the
checks Trustee's TPM verifier performs, and ``aael`` the minimal text AA event log kept for PCR
extends. Nothing here touches a TPM, a file or the event loop; ``attesters/tpm.py`` is the shell.
"""
