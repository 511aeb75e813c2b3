"""The ``tpm`` attester: a TPM 2.0 / vTPM quote through tpm2-pytss, in Trustee 1.5.2's format.

Evidence (see :mod:`attestation_agent.tpm.evidence`): one ``TPM2_Quote`` per configured PCR bank
(default SHA1 and SHA256, PCRs 0-23, as Trustiflux 1.3.1), qualifying data = the runtime-data
digest zero-padded to 64 bytes (Trustee checks its first 32 bytes), the AK public key as PEM
SPKI, the EK certificate from NV index 0x01c00002 when the TPM has one, the firmware event log
when the kernel exposes it, and the AA event log of runtime measurements when one exists.

Attestation key: an RSA-2048 restricted signing key (RSASSA-SHA256) created under the RSA EK
(TCG default EK template, endorsement hierarchy, PolicySecret(endorsement) session) — the
same hierarchy as Trustiflux's ``create_ak``, so a privacy-CA/EK-bound flow (openanolis
``tpm-pca``) can certify it later. By default it is created once per attester instance and
kept as a wrapped blob in memory; with ``ak_handle`` it is made persistent at that handle (and
reused if one already exists there). Nothing here trusts the AK: the verifier's policy must.

Runtime measurements extend SHA-256 PCR 23 (PCR 17 is not extendable at locality 0 on vTPMs,
guest-components PR #1605) and are recorded first in the text AA event log so a verifier can
replay them. Every TPM call blocks, so it runs in a worker thread under one lock: a TPM serves
one command at a time and swtpm's socket accepts one client at a time.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_SE,
    TPM2B_DATA,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from agents.logsetup import get_logger
from attestation_agent import eventlog as aael
from attestation_agent.attesters.base import Attester, MeasurementResult, RuntimeEvent, check_report_data
from attestation_agent.attesters.select import REGISTRY
from attestation_agent.errors import EvidenceError
from attestation_agent.tpm import pcr
from attestation_agent.tpm.attest import parse_attest
from attestation_agent.tpm.errors import TpmError
from attestation_agent.tpm.evidence import TpmEvidence, TpmQuote, encode_evidence
from attestation_agent.tpm.settings import (
    DEFAULT_AAEL,
    DEFAULT_EVENTLOG,
    DEFAULT_RUNTIME_PCR,
    DEFAULT_TCTI,
    pcr_list,
)
from attestation_agent.tpm.verify import check_pcrs

MAX_EVENTLOG = 8 * 1024 * 1024
TPM_ALGORITHM = "sha256"  # the AA event log replays against a SHA-256 PCR
AK_TEMPLATE = "rsa2048:rsassa-sha256:null"
AK_ATTRIBUTES = "userwithauth|restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|noda"

_log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TpmAttesterConfig:
    """Where the TPM is and what to quote. ``tcti`` is any tpm2-tss TCTI string."""

    tcti: str = DEFAULT_TCTI
    banks: tuple[str, ...] = ("SHA1", "SHA256")
    pcrs: tuple[int, ...] = tuple(range(pcr.PCR_COUNT))
    #: report data is zero-padded to this size (Trustiflux: 64; Trustee compares the first 32)
    qualifying_data_size: int = 64
    #: persistent AK handle (e.g. 0x81010002); None = a fresh AK per attester instance
    ak_handle: int | None = None
    #: read the EK certificate from NV (None in the evidence when absent)
    include_ek_cert: bool = True
    eventlog_path: Path | None = DEFAULT_EVENTLOG
    #: text AA event log of runtime measurements; None disables extend_runtime_measurement
    aael_path: Path | None = DEFAULT_AAEL
    runtime_pcr: int = DEFAULT_RUNTIME_PCR
    #: re-quote when a PCR changed between quote and read
    quote_attempts: int = 3

    def __post_init__(self) -> None:
        try:
            banks = tuple(pcr.bank(name).name for name in self.banks)
            indices = pcr.check_indices(self.pcrs)
            pcr.check_indices([self.runtime_pcr])
        except TpmError as exc:
            raise EvidenceError(f"TPM attester configuration: {exc.message}", hint=exc.hint) from None
        if not banks:
            raise EvidenceError("TPM attester configuration: no PCR bank to quote", hint="use e.g. SHA256")
        if not 32 <= self.qualifying_data_size <= 64:
            raise EvidenceError("TPM attester configuration: qualifying_data_size must be 32..64 bytes")
        if self.ak_handle is not None and not 0x81000000 <= self.ak_handle <= 0x81FFFFFF:
            raise EvidenceError(f"TPM attester configuration: AK handle 0x{self.ak_handle:x} is not a "
                                "persistent handle", hint="use 0x81000000-0x81ffffff, e.g. 0x81010002")
        object.__setattr__(self, "banks", tuple(dict.fromkeys(banks)))
        object.__setattr__(self, "pcrs", indices)


@dataclass
class _AkBlob:
    private: Any
    public: Any


@dataclass
class _Session:
    """One open ESAPI connection and the transient handles to flush when it closes."""

    esapi: ESAPI
    transient: list[Any] = field(default_factory=list)
    ek_template: tuple[bytes | None, Any] | None = None


def _tss_error(what: str, tcti: str, exc: Exception) -> EvidenceError:
    return EvidenceError(f"TPM {what} failed on TCTI {tcti!r}: {exc}",
                         hint="check that the TPM device (or swtpm) is present and reachable, and that this "
                              "process may open it")


class TpmAttester(Attester):
    tee_type = "tpm"

    def __init__(self, config: TpmAttesterConfig | None = None) -> None:
        self.config = config or TpmAttesterConfig()
        self._lock = threading.Lock()  # one TPM connection at a time
        self._log_lock = threading.Lock()  # log append + extend of one event are one unit
        self._ak: _AkBlob | None = None

    # ----------------------------------------------------------------- blocking TPM helpers
    def _call(self, what: str, fn: Callable[[_Session], T]) -> T:
        """Run ``fn`` on a fresh ESAPI connection; flush what it loaded; map TSS errors."""
        with self._lock:
            try:
                esapi = ESAPI(self.config.tcti)
            except (TSS2_Exception, RuntimeError, ValueError) as exc:
                raise _tss_error("connection", self.config.tcti, exc) from None
            session = _Session(esapi)
            try:
                return fn(session)
            except TSS2_Exception as exc:
                raise _tss_error(what, self.config.tcti, exc) from None
            finally:
                for handle in reversed(session.transient):
                    with suppress(TSS2_Exception):
                        esapi.flush_context(handle)
                esapi.close()

    @staticmethod
    def _policy_secret(session: _Session) -> Any:
        esapi = session.esapi
        handle = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        session.transient.append(handle)
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, handle)
        return handle

    @staticmethod
    def _ek_template(session: _Session) -> tuple[bytes | None, Any]:
        """(EK certificate DER or None, EK template) per the TCG EK Credential Profile, cached per session."""
        if session.ek_template is None:
            esapi = session.esapi
            reader = NVReadEK(esapi)

            def read_nv(index: Any) -> bytes:
                # probe first: a failed NV_ReadPublic makes tpm2-tss log errors on stderr
                _, data = esapi.get_capability(TPM2_CAP.HANDLES, int(index), 1)
                if int(index) not in list(data.data.handles):
                    raise NoSuchIndex(index)
                return reader(index)

            session.ek_template = create_ek_template("EK-RSA2048", read_nv)
        return session.ek_template

    def _ek(self, session: _Session) -> Any:
        _, template = self._ek_template(session)
        ek, *_ = session.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        session.transient.append(ek)
        return ek

    def _create_ak(self, session: _Session) -> tuple[Any, Any, Any]:
        """A new AK under the EK: returns (EK handle, private blob, public blob)."""
        ek = self._ek(session)
        template = TPM2B_PUBLIC.parse(AK_TEMPLATE, objectAttributes=AK_ATTRIBUTES)
        private, public, *_ = session.esapi.create(ek, TPM2B_SENSITIVE_CREATE(), template,
                                                   session1=self._policy_secret(session))
        return ek, private, public

    @staticmethod
    def _persistent_exists(esapi: ESAPI, handle: int) -> bool:
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, handle, 1)
        return handle in list(data.data.handles)

    def _load_ak(self, session: _Session) -> Any:
        esapi = session.esapi
        handle = self.config.ak_handle
        if handle is not None:
            if not self._persistent_exists(esapi, handle):
                ek, private, public = self._create_ak(session)
                loaded = esapi.load(ek, private, public, session1=self._policy_secret(session))
                session.transient.append(loaded)
                esapi.evict_control(ESYS_TR.OWNER, loaded, handle)
                _log.info("tpm_ak_persisted", handle=f"0x{handle:08x}")
            ak = esapi.tr_from_tpmpublic(handle)
            public, _, _ = esapi.read_public(ak)
            attrs = public.publicArea.objectAttributes
            if (public.publicArea.type != TPM2_ALG.RSA or not attrs & TPMA_OBJECT.RESTRICTED
                    or not attrs & TPMA_OBJECT.SIGN_ENCRYPT):
                raise EvidenceError(f"the key at persistent handle 0x{handle:08x} is not a restricted RSA "
                                    "signing key", hint="evict it or configure another ak_handle")
            return ak
        if self._ak is None:
            ek, private, public = self._create_ak(session)
            self._ak = _AkBlob(private, public)
            _log.info("tpm_ak_created", parent="EK-RSA2048", template=AK_TEMPLATE)
        else:
            ek = self._ek(session)
        ak = esapi.load(ek, self._ak.private, self._ak.public, session1=self._policy_secret(session))
        session.transient.append(ak)
        return ak

    @staticmethod
    def _ak_pem(esapi: ESAPI, ak: Any) -> str:
        public, _, _ = esapi.read_public(ak)
        area = public.publicArea
        modulus = int.from_bytes(bytes(area.unique.rsa), "big")
        exponent = int(area.parameters.rsaDetail.exponent) or 65537
        key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        return key.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    @staticmethod
    def _read_pcrs(esapi: ESAPI, bank: pcr.Bank, indices: tuple[int, ...]) -> dict[int, bytes]:
        """PCR values; TPM2_PCR_Read returns at most 8 per call, so loop over what is left."""
        values: dict[int, bytes] = {}
        pending = list(indices)
        while pending:
            selection = TPML_PCR_SELECTION([TPMS_PCR_SELECTION(
                hash=bank.alg_id, sizeofSelect=3, pcrSelect=pcr.select_bitmap(pending))])
            _, out, digests = esapi.pcr_read(selection)
            got = [i for s in out for i in pcr.selected_indices(bytes(s.pcrSelect)[:s.sizeofSelect])
                   if s.hash == bank.alg_id]
            if not got:
                raise EvidenceError(f"the TPM returned no {bank.name} PCR values for PCRs {pending}",
                                    hint=f"the {bank.name} bank is probably not allocated; quote other banks")
            for index, digest in zip(got, digests, strict=False):
                values[index] = bytes(digest)
            pending = [i for i in pending if i not in values]
        return values

    def _quote_bank(self, esapi: ESAPI, ak: Any, bank: pcr.Bank, nonce: bytes) -> TpmQuote:
        indices = self.config.pcrs
        selection = TPML_PCR_SELECTION([TPMS_PCR_SELECTION(
            hash=bank.alg_id, sizeofSelect=3, pcrSelect=pcr.select_bitmap(indices))])
        last: TpmError | None = None
        for _ in range(max(1, self.config.quote_attempts)):
            attest, signature = esapi.quote(ak, selection, TPM2B_DATA(nonce), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            if signature.sigAlg != TPM2_ALG.RSASSA:
                raise EvidenceError(f"the TPM signed the quote with algorithm {signature.sigAlg}, not RSASSA")
            body = bytes(attest)
            values = self._read_pcrs(esapi, bank, indices)
            quote = TpmQuote(body, bytes(signature.signature.rsassa.sig), tuple(values[i] for i in indices))
            try:
                parsed = parse_attest(body)
                selected = check_pcrs(parsed, bank.name, quote.pcrs)
            except TpmError as exc:  # a PCR moved between quote and read: quote again
                last = exc
                continue
            if selected != indices:
                raise EvidenceError(f"the TPM quoted {bank.name} PCRs {list(selected)} instead of {list(indices)}",
                                    hint=f"the {bank.name} bank may not be allocated on this TPM")
            return quote
        raise EvidenceError(f"the {bank.name} PCR values kept changing while quoting: {last}",
                            hint="another process is extending PCRs; retry the attestation")

    def _ek_cert_pem(self, session: _Session) -> str | None:
        if not self.config.include_ek_cert:
            return None
        der, _ = self._ek_template(session)
        if not der:
            return None
        try:
            # NV certificates are often zero-padded after the DER, which the DER loader refuses
            length = 4 + int.from_bytes(der[2:4], "big") if der[:2] == b"\x30\x82" else len(der)
            cert = x509.load_der_x509_certificate(der[:length])
        except ValueError:
            _log.warning("tpm_ek_cert_unparsable", nv_index="0x01c00002", size=len(der))
            return None
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _collect(self, nonce: bytes) -> tuple[str, dict[str, TpmQuote], str | None]:
        def run(session: _Session) -> tuple[str, dict[str, TpmQuote], str | None]:
            ak = self._load_ak(session)
            quotes = {name: self._quote_bank(session.esapi, ak, pcr.bank(name), nonce) for name in self.config.banks}
            return self._ak_pem(session.esapi, ak), quotes, self._ek_cert_pem(session)

        return self._call("quote", run)

    def _read_pcr(self, index: int) -> bytes:
        sha256 = pcr.bank("SHA256")
        return self._call("PCR read", lambda s: self._read_pcrs(s.esapi, sha256, (index,))[index])

    def _extend(self, index: int, digest: bytes) -> None:
        def run(session: _Session) -> None:
            value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
            value.digest.sha256 = digest
            session.esapi.pcr_extend(ESYS_TR(index), TPML_DIGEST_VALUES([value]))

        self._call("PCR extend", run)

    # ----------------------------------------------------------------- files
    @staticmethod
    def _read_optional(path: Path | None, limit: int, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("tpm_optional_file_unreadable", what=what, path=str(path), error=exc.strerror)
            return None
        if len(data) > limit:
            raise EvidenceError(f"{what} {path} is larger than {limit} bytes", hint="this is not a TCG event log")
        return data

    # ----------------------------------------------------------------- Attester API
    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        data = check_report_data(report_data)
        nonce = data.ljust(self.config.qualifying_data_size, b"\0")
        ak_pem, quotes, ek_cert = await asyncio.to_thread(self._collect, nonce)
        eventlog = await asyncio.to_thread(self._read_optional, self.config.eventlog_path, MAX_EVENTLOG,
                                           "TPM event log")
        aa_log = await asyncio.to_thread(self._read_optional, self.config.aael_path, aael.MAX_LOG_SIZE,
                                         "AA event log")
        evidence = TpmEvidence(ak_pubkey=ak_pem, quotes=quotes, ek_cert=ek_cert, eventlog=eventlog,
                               aa_eventlog=aa_log.decode("utf-8", "replace") if aa_log else None)
        return encode_evidence(evidence)

    async def extend_runtime_measurement(self, event: RuntimeEvent) -> MeasurementResult:
        path = self.config.aael_path
        if path is None:
            return MeasurementResult.NOT_ENABLED
        index = self.config.runtime_pcr if event.register_index is None else event.register_index
        if index != self.config.runtime_pcr:
            raise EvidenceError(f"runtime events go to PCR {self.config.runtime_pcr}; PCR {index} was requested",
                                hint="omit register_index or configure runtime_pcr")
        try:
            line = aael.make_event(event.domain, event.operation, event.content).line
        except aael.AaEventLogError as exc:
            raise EvidenceError(f"runtime event rejected: {exc.message}", hint=exc.hint) from None
        await asyncio.to_thread(self._record_and_extend, path, index, line)
        return MeasurementResult.OK

    def _record_and_extend(self, path: Path, index: int, line: str) -> None:
        """Durably append ``line`` to the log, then extend the PCR (log first: a crash leaves a
        log one entry ahead of the PCR, which :meth:`_sync_log` repairs, never the reverse)."""
        with self._log_lock:
            self._sync_log(path, index)
            _append_durably(path, line)
            self._extend(index, aael.line_digest(TPM_ALGORITHM, line))

    def _sync_log(self, path: Path, index: int) -> None:
        text = path.read_text("utf-8") if path.exists() else ""
        if not text.strip():
            init = aael.init_line(TPM_ALGORITHM, self._read_pcr(index))
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _append_durably(path, init, truncate=True)
            self._extend(index, aael.line_digest(TPM_ALGORITHM, init))
            return
        try:
            log = aael.parse_text(text)
        except aael.AaEventLogError as exc:
            raise EvidenceError(f"AA event log {path} is corrupt: {exc.message}",
                                hint="runtime measurements cannot continue; restart the VM") from None
        current = self._read_pcr(index)
        if log.algorithm != TPM_ALGORITHM:
            raise EvidenceError(f"AA event log {path} uses {log.algorithm}; the SHA-256 PCR bank needs sha256",
                                hint="the log was written by something else; restart the VM")
        try:
            pending = log.unextended_line(current)
        except aael.AaEventLogError:
            raise EvidenceError(f"AA event log {path} does not replay to PCR {index}",
                                hint="someone else extended the PCR or edited the log; restart the VM") from None
        if pending is not None:
            _log.warning("tpm_aael_resume_extend", pcr=index)  # crashed between append and extend
            self._extend(index, aael.line_digest(TPM_ALGORITHM, pending))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tcti": self.config.tcti, "banks": list(self.config.banks),
                "pcrs": list(self.config.pcrs), "runtime_pcr": self.config.runtime_pcr,
                "ak": "fresh" if self.config.ak_handle is None else f"0x{self.config.ak_handle:08x}"}


def _append_durably(path: Path, line: str, *, truncate: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _optional_path(value: str | None, default: Path) -> Path | None:
    if value is None:
        return default
    return None if value == "off" else Path(value)


def config_from_settings(values: Mapping[str, Any]) -> TpmAttesterConfig:
    """Build the config from settings parsed with :data:`TPM_SETTINGS`."""
    handle = values.get("tpm_ak_handle")
    try:
        ak_handle = int(handle, 16) if handle else None
    except ValueError:
        raise EvidenceError(f"tpm_ak_handle {handle!r} is not a hex handle", hint="e.g. 0x81010002") from None
    return TpmAttesterConfig(
        tcti=values.get("tpm_tcti") or DEFAULT_TCTI,
        banks=tuple(values.get("tpm_banks") or ("SHA1", "SHA256")),
        pcrs=tuple(int(i) for i in pcr_list(list(values.get("tpm_pcrs") or ["0-23"]))),
        ak_handle=ak_handle,
        eventlog_path=_optional_path(values.get("tpm_eventlog"), DEFAULT_EVENTLOG),
        aael_path=_optional_path(values.get("tpm_aael"), DEFAULT_AAEL),
        runtime_pcr=int(values.get("tpm_runtime_pcr", DEFAULT_RUNTIME_PCR)),
    )


REGISTRY.register("tpm", lambda settings: TpmAttester(config_from_settings(settings)))
