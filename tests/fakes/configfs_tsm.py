"""An emulated TDX guest: configfs-tsm report directories, RTMRs, and a test quoting enclave.

configfs cannot be reproduced with a plain directory (``mkdir`` must create the attribute files,
``outblob`` is generated when read), so the attester's configfs operations go through the
``TsmFilesystem`` seam and :class:`FakeTsmFilesystem` implements the kernel ABI
(Documentation/ABI/testing/configfs-tsm-report, drivers/virt/coco/tsm.c, tdx-guest.c):

* ``mkdir <root>/<name>`` creates ``provider``, ``generation``, ``inblob``, ``outblob``,
  ``auxblob``; ``mkdir`` anywhere else is ENOENT, an existing name EEXIST;
* ``inblob`` is write-only, at most 64 bytes (EINVAL above); each write increments
  ``generation`` and invalidates the cached ``outblob``;
* reading ``outblob`` generates the quote lazily (then caches it); the tdx_guest provider fails
  the read with EINVAL unless the inblob was exactly 64 bytes;
* read-only attributes refuse writes (EACCES), write-only ones refuse reads (EACCES);
* ``rmdir`` removes the entry (a plain rmdir, no need to unlink attributes).

Fault knobs reproduce real failure modes: ``no_qgs`` (empty outblob, QEMU without a reachable
QGS), ``busy`` (EBUSY n times), ``racing_writer`` (another writer bumps ``generation``),
``provider`` (another TEE).

The quoting enclave: a real fixture quote is the template for the header and TD report body;
RTMRs come from the emulated registers and REPORTDATA from the inblob. Since the signature
would no longer verify, the fake QE holds its own P-256 attestation key, re-signs header||body,
rebuilds QE REPORTDATA = SHA-256(AK || auth data) and signs the QE report with a test "PCK" leaf
issued by a test root CA. The result passes every offline check in ``quote_verify`` — but the PCK
chain does *not* chain to Intel's root, which is why the stand-in verifier reports the root it saw
and checks signatures and key binding only.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation_agent.tdx.quote import Quote, QuoteSignature, parse_quote
from attestation_agent.tdx.quote_verify import qe_report_data_binding

ATTRIBUTES = ("provider", "generation", "inblob", "outblob", "auxblob")
_READ_ONLY = {"provider", "generation", "outblob", "auxblob"}


def _raw_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CAI test QE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


class TestQuotingEnclave:
    """Signs quotes like Intel's QE, with test keys (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("CAI Test SGX Root CA", "CAI Test SGX Root CA", root_key, root_key, ca=True)
        self.pck_leaf = _cert("CAI Test SGX PCK Certificate", "CAI Test SGX Root CA", self.pck_key, root_key, ca=False)
        self.pck_chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.pck_leaf, self.root))

    @property
    def attestation_key_raw(self) -> bytes:
        return self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]

    def sign(self, template: Quote, rtmrs: tuple[bytes, bytes, bytes, bytes], report_data: bytes) -> bytes:
        body = replace(template.body, rtmrs=rtmrs, report_data=report_data)
        unsigned = template.with_body(body)
        ak = self.attestation_key_raw
        auth = template.signature.qe_auth_data
        qe_report = template.signature.qe_report.with_report_data(qe_report_data_binding(ak, auth))
        signature = QuoteSignature(
            signature=_raw_sign(self.attestation_key, unsigned.signed_bytes()),
            attestation_key=ak,
            qe_report=qe_report,
            qe_report_signature=_raw_sign(self.pck_key, qe_report.raw),
            qe_auth_data=auth,
            pck_cert_type=5,
            pck_cert_data=self.pck_chain_pem + b"\0",
        )
        return replace(unsigned, signature=signature).to_bytes()


class EmulatedRtmr:
    """One RTMR: reads return 48 bytes, an extend is ``SHA-384(old || data)`` with exactly 48 bytes."""

    def __init__(self, guest: EmulatedTdxGuest, index: int) -> None:
        self.guest = guest
        self.index = index
        self.extends = 0

    def read(self) -> bytes:
        with self.guest.lock:
            return self.guest.rtmrs[self.index]

    def extend(self, data: bytes) -> None:
        if len(data) != 48:
            raise OSError(errno.EINVAL, "RTMR extend needs exactly 48 bytes")
        with self.guest.lock:
            self.guest.rtmrs[self.index] = hashlib.sha384(self.guest.rtmrs[self.index] + data).digest()
            self.extends += 1


@dataclass
class _Entry:
    inblob: bytes | None = None
    generation: int = 0
    outblob: bytes | None = None


@dataclass
class Faults:
    no_qgs: bool = False
    busy: int = 0
    racing_writer: bool = False
    provider: str = "tdx_guest"
    keep_entries: bool = False
    tamper_report_data: bool = False


class FakeTsmFilesystem:
    """The configfs-tsm report tree of an :class:`EmulatedTdxGuest` (implements ``TsmFilesystem``)."""

    def __init__(self, guest: EmulatedTdxGuest) -> None:
        self.guest = guest
        self.entries: dict[str, _Entry] = {}
        self.created: list[str] = []
        self.removed: list[str] = []
        self.inblob_writes: list[int] = []

    def _locate(self, path: Path) -> tuple[_Entry, str]:
        path = Path(path)
        entry = self.entries.get(path.parent.name) if path.parent.parent == self.guest.tsm_root else None
        if entry is None or path.name not in ATTRIBUTES:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return entry, path.name

    def mkdir(self, path: Path) -> None:
        path = Path(path)
        if path.parent != self.guest.tsm_root:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if path.name in self.entries:
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        self.entries[path.name] = _Entry()
        self.created.append(path.name)

    def rmdir(self, path: Path) -> None:
        path = Path(path)
        if path.parent != self.guest.tsm_root or path.name not in self.entries:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        self.removed.append(path.name)
        if not self.guest.faults.keep_entries:
            del self.entries[path.name]

    def write(self, path: Path, data: bytes) -> int:
        entry, name = self._locate(path)
        if name in _READ_ONLY:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if len(data) > 64:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        self.inblob_writes.append(len(data))
        entry.inblob = bytes(data)
        entry.generation += 1
        entry.outblob = None
        return len(data)

    def read(self, path: Path, limit: int) -> bytes:
        entry, name = self._locate(path)
        faults = self.guest.faults
        if name == "inblob":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if name == "provider":
            return (faults.provider + "\n").encode()
        if name == "generation":
            return f"{entry.generation}\n".encode()
        if name == "auxblob":
            return b""
        # outblob
        if faults.busy > 0:
            faults.busy -= 1
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        if entry.outblob is None:
            if entry.inblob is None or len(entry.inblob) != 64:
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            entry.outblob = b"" if faults.no_qgs else self.guest.generate_quote(entry.inblob)
        if faults.racing_writer:
            entry.generation += 1
        return entry.outblob[:limit + 1]


@dataclass
class EmulatedTdxGuest:
    """A TD as the attester sees it. ``template`` is a real quote (default: go-tdx-guest's
    cos-113 quote, whose CCEL is in the same fixture directory, so the CCEL replays)."""

    template_bytes: bytes
    tsm_root: Path
    rtmrs: list[bytes] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.template = parse_quote(self.template_bytes)
        if not self.rtmrs:
            self.rtmrs = list(self.template.rtmrs)
        self.qe = TestQuotingEnclave()
        self.fs = FakeTsmFilesystem(self)
        self.quotes_generated = 0

    def rtmr(self, index: int) -> EmulatedRtmr:
        return EmulatedRtmr(self, index)

    def generate_quote(self, report_data: bytes) -> bytes:
        with self.lock:
            rtmrs = tuple(self.rtmrs)
        if self.faults.tamper_report_data:
            report_data = bytes(64)
        self.quotes_generated += 1
        return self.qe.sign(self.template, rtmrs, report_data)  # type: ignore[arg-type]


def emulated_guest(fixture_dir: Path, tmp_path: Path, template: str = "cos-113-tdx-quote.dat") -> EmulatedTdxGuest:
    """An emulated TD whose CCEL table and log (go-tdx-guest fixtures) sit in ``tmp_path`` like sysfs."""
    acpi = tmp_path / "acpi" / "tables"
    (acpi / "data").mkdir(parents=True, exist_ok=True)
    (acpi / "CCEL").write_bytes((fixture_dir / "ccel_table.dat").read_bytes())
    (acpi / "data" / "CCEL").write_bytes((fixture_dir / "ccel_data.dat").read_bytes())
    return EmulatedTdxGuest((fixture_dir / template).read_bytes(), tmp_path / "tsm" / "report")
