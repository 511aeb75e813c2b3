"""A fake ``pynvml`` for the confidential-computing calls, fed with real NVIDIA fixture reports.

``FakeNvml`` is a module-like object: the attester receives it where it would receive the
``pynvml`` module. It mirrors nvidia-ml-py 13.615.71 exactly where the attester can observe it —
same function names and arguments, the real ctypes structs (``c_nvmlConfComputeGpuAttestationReport_t``
etc. are imported from pynvml, so field names, sizes and ctypes errors are the real ones), the
real constants, ``NVMLError`` raised with real codes (``NVMLError(12)`` is
``NVMLError_LibraryNotFound``), str results where pynvml's ``convertStrBytes`` decodes, the
low-level ``nvmlSystemGetConfComputeSettings(byref(settings))`` that returns a raw code, and
``NVML_ERROR_UNINITIALIZED`` before ``nvmlInit``.

The honest problem: a GPU signs its report with a key only NVIDIA's hardware has, so a fake
cannot produce a *fixture-signed* report for a fresh nonce. Two modes solve it:

- ``resign`` (default): the fake is a GPU whose identity is a **test CA** made here
  (:class:`TestDeviceCA`: root → intermediate → one leaf per GPU, ECDSA P-384, the leaf carrying
  a DICE FWID extension). For each call it builds a fresh SPDM response from the fixture's real
  measurement blocks and opaque data (so parsers and claims see real content) with the caller's
  nonce, and signs it with the test leaf key. Tests trust ``ca.root`` instead of NVIDIA's root.
- ``replay``: the fixture report and its NVIDIA chain are returned verbatim; the nonce inside is
  the fixture's, so tests must make the caller ask for exactly that nonce. Used to show that
  real NVIDIA-signed evidence passes the same code path against the real NVIDIA root.

Faults (per GPU): ``tamper`` flips a measurement byte after signing, ``ignore_nonce`` signs a
different nonce than requested (the go-nvml #128 failure), ``errors`` maps a function name to an
NVML error code it raises.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import pynvml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation_agent.nvidia.spdm import OpaqueData, OpaqueField, SpdmReport, build_report, parse_report

# --- the pynvml surface the attester may use: constants, structs and errors are the real ones ----
NVMLError = pynvml.NVMLError
NVML_SUCCESS = pynvml.NVML_SUCCESS
NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NVML_DEVICE_ARCH_HOPPER = pynvml.NVML_DEVICE_ARCH_HOPPER
NVML_DEVICE_ARCH_BLACKWELL = pynvml.NVML_DEVICE_ARCH_BLACKWELL
NVML_DEVICE_ARCH_AMPERE = pynvml.NVML_DEVICE_ARCH_AMPERE
NVML_CC_SYSTEM_FEATURE_DISABLED = pynvml.NVML_CC_SYSTEM_FEATURE_DISABLED
NVML_CC_SYSTEM_FEATURE_ENABLED = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
NVML_CC_SYSTEM_ENVIRONMENT_UNAVAILABLE = pynvml.NVML_CC_SYSTEM_ENVIRONMENT_UNAVAILABLE
NVML_CC_SYSTEM_ENVIRONMENT_SIM = pynvml.NVML_CC_SYSTEM_ENVIRONMENT_SIM
NVML_CC_SYSTEM_ENVIRONMENT_PROD = pynvml.NVML_CC_SYSTEM_ENVIRONMENT_PROD
NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = pynvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF
NVML_CC_SYSTEM_DEVTOOLS_MODE_ON = pynvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
NVML_CC_SYSTEM_MULTIGPU_NONE = pynvml.NVML_CC_SYSTEM_MULTIGPU_NONE
NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE = pynvml.NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE
NVML_CC_SYSTEM_MULTIGPU_NVLE = pynvml.NVML_CC_SYSTEM_MULTIGPU_NVLE
NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE = pynvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = pynvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
NVML_CC_GPU_CEC_NONCE_SIZE = pynvml.NVML_CC_GPU_CEC_NONCE_SIZE
nvmlSystemConfComputeSettings_v1 = pynvml.nvmlSystemConfComputeSettings_v1
c_nvmlDevice_t = pynvml.c_nvmlDevice_t
c_nvmlConfComputeSystemState_t = pynvml.c_nvmlConfComputeSystemState_t
c_nvmlSystemConfComputeSettings_v1_t = pynvml.c_nvmlSystemConfComputeSettings_v1_t
c_nvmlConfComputeGpuAttestationReport_t = pynvml.c_nvmlConfComputeGpuAttestationReport_t
c_nvmlConfComputeGpuCertificate_t = pynvml.c_nvmlConfComputeGpuCertificate_t

FWID_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CAI test GPU vendor"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestDeviceCA:
    """A throwaway stand-in for NVIDIA's device PKI: root → intermediate → per-GPU leaves."""

    __test__ = False  # not a pytest class

    def __init__(self, *, not_after: dt.datetime | None = None) -> None:
        self.not_before = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        self.not_after = not_after or dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = self._cert(_name("CAI Test Device Identity CA"), self.root_key.public_key(), _name(
            "CAI Test Device Identity CA"), self.root_key, ca=True, path_length=None)
        self.ica_key = ec.generate_private_key(ec.SECP384R1())
        self.ica = self._cert(_name("CAI Test GH100 Provisioner ICA"), self.ica_key.public_key(), self.root.subject,
                              self.root_key, ca=True, path_length=0)

    def _cert(self, subject: x509.Name, public_key, issuer: x509.Name, signer, *, ca: bool,
              path_length: int | None, fwid: bytes | None = None, not_after: dt.datetime | None = None
              ) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(self.not_before)
                   .not_valid_after(not_after or self.not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                                decipher_only=False), critical=True))
        if fwid is not None:
            # A DICE TcbInfo-shaped value whose fwids list holds one SHA-384 entry (as on Hopper).
            entry = _SHA384_OID_DER + b"\x04\x30" + fwid
            value = b"\x30" + bytes([len(entry) + 4]) + b"\xa6" + bytes([len(entry) + 2]) + b"\x30" + bytes(
                [len(entry)]) + entry
            builder = builder.add_extension(x509.UnrecognizedExtension(FWID_OID, value), critical=False)
        return builder.sign(signer, hashes.SHA384())

    def issue_leaf(self, uuid: str, fwid: bytes | None, *, not_after: dt.datetime | None = None
                   ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP384R1())
        cert = self._cert(_name(f"CAI Test GSP FMC LF {uuid}"), key.public_key(), self.ica.subject, self.ica_key,
                          ca=False, path_length=None, fwid=fwid, not_after=not_after)
        return key, cert

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)


def load_hex_report(path: Path) -> bytes:
    """Fixture reports are hex text (no prefix, no newline in most files)."""
    return bytes.fromhex(path.read_text().strip())


@dataclass
class FakeGpu:
    """One emulated GPU built from a fixture report (and, for ``replay``, its NVIDIA chain)."""

    report: bytes
    chain_pem: bytes | None = None
    uuid: str = field(default_factory=lambda: "GPU-" + os.urandom(16).hex())
    name: str = "NVIDIA H100 80GB HBM3"
    arch: int = NVML_DEVICE_ARCH_HOPPER
    mode: str = "resign"  # or "replay"
    tamper: bool = False
    ignore_nonce: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    leaf_not_after: dt.datetime | None = None
    template: SpdmReport = field(init=False)
    key: ec.EllipticCurvePrivateKey | None = field(init=False, default=None)
    leaf: x509.Certificate | None = field(init=False, default=None)
    last_nonce: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.template = parse_report(self.report)
        if self.mode not in ("resign", "replay"):
            raise ValueError("FakeGpu mode is 'resign' or 'replay'")
        if self.mode == "replay" and self.chain_pem is None:
            raise ValueError("replay mode needs the fixture's certificate chain")

    @property
    def vbios_version(self) -> str:
        return self.template.response.opaque.vbios_version or "96.00.00.00.01"

    def enrol(self, ca: TestDeviceCA) -> None:
        self.key, self.leaf = ca.issue_leaf(self.uuid, self.template.response.opaque.fwid,
                                            not_after=self.leaf_not_after)
        self.chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf, ca.ica, ca.root))

    def attestation_report(self, nonce: bytes) -> bytes:
        self.last_nonce = nonce
        if self.mode == "replay":
            return self.report
        assert self.key is not None, "FakeGpu was not enrolled with a TestDeviceCA"
        response = self.template.response
        signed_nonce = bytes(reversed(nonce)) if self.ignore_nonce else nonce
        fields = tuple(OpaqueField(f.type, f.data) for f in response.opaque)
        body = build_report(signed_nonce, response.blocks, os.urandom(32), OpaqueData(fields), param2=response.param2)
        r, s = decode_dss_signature(self.key.sign(body, ec.ECDSA(hashes.SHA384())))
        report = bytearray(body + r.to_bytes(48, "big") + s.to_bytes(48, "big"))
        if self.tamper:
            report[37 + 8 + 10] ^= 0x01  # inside measurement block 1's value: signed bytes change
        return bytes(report)


class FakeNvml:
    """Module-like fake of ``pynvml`` for the CC attestation calls (see module docstring)."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], *, ca: TestDeviceCA | None = None, cc_enabled: bool = True,
                 environment: int = NVML_CC_SYSTEM_ENVIRONMENT_PROD, devtools: bool = False,
                 multi_gpu_mode: int = NVML_CC_SYSTEM_MULTIGPU_NONE, library_present: bool = True,
                 driver_version: str | None = None, errors: dict[str, int] | None = None) -> None:
        self.gpus = list(gpus)
        self.ca = ca or TestDeviceCA()
        for gpu in self.gpus:
            if gpu.mode == "resign":
                gpu.enrol(self.ca)
        self.cc_enabled = cc_enabled
        self.environment = environment
        self.devtools = devtools
        self.multi_gpu_mode = multi_gpu_mode
        self.library_present = library_present
        first = self.gpus[0].template.response.opaque.driver_version if self.gpus else None
        self.driver_version = driver_version or first or "550.90.07"
        self.errors = dict(errors or {})
        self.initialized = 0
        self.ready_state = NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
        self.calls: list[str] = []
        # copy the real pynvml constants onto the instance namespace so ``nvml.NVML_...`` works
        for name, value in globals().items():
            if name.startswith(("NVML_", "c_nvml", "nvmlSystemConfComputeSettings")):
                setattr(self, name, value)

    # -- plumbing -------------------------------------------------------------------------------
    def _enter(self, name: str, *, needs_init: bool = True) -> None:
        self.calls.append(name)
        if name in self.errors:
            raise NVMLError(self.errors[name])
        if needs_init and not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle, name: str) -> FakeGpu:
        if not isinstance(handle, c_nvmlDevice_t):
            raise ctypes.ArgumentError(f"{name}: argument 1: wrong type")
        index = ctypes.cast(handle, ctypes.c_void_p).value
        if index is None or not 1 <= index <= len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index - 1]
        if name in gpu.errors:
            raise NVMLError(gpu.errors[name])
        return gpu

    # -- the pynvml API -------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit", needs_init=False)
        if not self.library_present:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int):
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= int(index) < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return ctypes.cast(ctypes.c_void_p(int(index) + 1), c_nvmlDevice_t)

    def nvmlDeviceGetUUID(self, handle) -> str:
        self._enter("nvmlDeviceGetUUID")
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle) -> str:
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetVbiosVersion(self, handle) -> str:
        self._enter("nvmlDeviceGetVbiosVersion")
        return self._gpu(handle, "nvmlDeviceGetVbiosVersion").vbios_version

    def nvmlDeviceGetArchitecture(self, device) -> int:
        self._enter("nvmlDeviceGetArchitecture")
        return self._gpu(device, "nvmlDeviceGetArchitecture").arch

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetConfComputeState(self):
        self._enter("nvmlSystemGetConfComputeState")
        state = c_nvmlConfComputeSystemState_t()
        state.environment = self.environment
        state.ccFeature = NVML_CC_SYSTEM_FEATURE_ENABLED if self.cc_enabled else NVML_CC_SYSTEM_FEATURE_DISABLED
        state.devToolsMode = NVML_CC_SYSTEM_DEVTOOLS_MODE_ON if self.devtools else NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF
        return state

    def nvmlSystemGetConfComputeSettings(self, settings) -> int:
        """Low level like pynvml: takes ``byref(struct)``, returns the raw nvmlReturn_t, never raises."""
        self.calls.append("nvmlSystemGetConfComputeSettings")
        if "nvmlSystemGetConfComputeSettings" in self.errors:
            return self.errors["nvmlSystemGetConfComputeSettings"]
        if not self.initialized:
            return NVML_ERROR_UNINITIALIZED
        target = getattr(settings, "_obj", settings)
        if not isinstance(target, c_nvmlSystemConfComputeSettings_v1_t):
            raise ctypes.ArgumentError("nvmlSystemGetConfComputeSettings: argument 1: wrong type")
        if target.version != nvmlSystemConfComputeSettings_v1:
            return NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        state = self.nvmlSystemGetConfComputeState()
        target.environment, target.ccFeature, target.devToolsMode = (state.environment, state.ccFeature,
                                                                     state.devToolsMode)
        target.multiGpuMode = self.multi_gpu_mode
        return NVML_SUCCESS

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, device, c_nonce):
        self._enter("nvmlDeviceGetConfComputeGpuAttestationReport")
        gpu = self._gpu(device, "nvmlDeviceGetConfComputeGpuAttestationReport")
        report_struct = c_nvmlConfComputeGpuAttestationReport_t()
        # exactly pynvml's conversion: a nonce of any other length than 32 raises ctypes' TypeError
        c_nonce_arr = (ctypes.c_uint8 * len(c_nonce))(*(c_nonce))
        report_struct.nonce = c_nonce_arr
        if not self.cc_enabled and self.multi_gpu_mode != NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        report = gpu.attestation_report(bytes(report_struct.nonce))
        report_struct.attestationReportSize = len(report)
        ctypes.memmove(report_struct.attestationReport, report, len(report))
        report_struct.isCecAttestationReportPresent = 0
        return report_struct

    def nvmlDeviceGetConfComputeGpuCertificate(self, device):
        self._enter("nvmlDeviceGetConfComputeGpuCertificate")
        gpu = self._gpu(device, "nvmlDeviceGetConfComputeGpuCertificate")
        cert = c_nvmlConfComputeGpuCertificate_t()
        chain = gpu.chain_pem or b""
        cert.attestationCertChainSize = len(chain)
        ctypes.memmove(cert.attestationCertChain, chain, len(chain))
        identity = chain[chain.find(b"-----END CERTIFICATE-----") + 26:]  # device-identity chain: no FMC leaf
        cert.certChainSize = len(identity)
        ctypes.memmove(cert.certChain, identity, len(identity))
        return cert

    def nvmlSystemGetConfComputeGpusReadyState(self) -> int:
        self._enter("nvmlSystemGetConfComputeGpusReadyState")
        return self.ready_state

    def nvmlSystemSetConfComputeGpusReadyState(self, state: int) -> int:
        self._enter("nvmlSystemSetConfComputeGpusReadyState")
        if state not in (NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE, NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self.ready_state = state
        return NVML_SUCCESS
