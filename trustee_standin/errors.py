"""KBS error responses with Trustee's variants, detail texts and per-generation status codes.

Development and tests only. The detail strings are Trustee's ``Display`` texts (kbs/src/error.rs);
the status depends on the server generation being simulated (reference section 1.7): openanolis
1.5.x answers 500 for RCAR failures, 403 for a policy deny and 500 for a missing resource, while
upstream CoCo answers 401 for nearly everything.
"""

from __future__ import annotations

import json

from aiohttp import web

from agents.errors import CaiError
from attestation_agent.kbs.messages import error_body
from trustee_standin.config import ErrorStyle

_OPENANOLIS_STATUS = {
    "AttestationError": 500,
    "TokenNotFound": 401,
    "TokenVerifierError": 401,
    "PolicyDeny": 403,
    "PluginInternalError": 500,
    "PluginNotFound": 404,
    "InvalidRequestPath": 404,
    "JweError": 400,
    "SerdeError": 400,
    "AdminAuth": 401,
    "PayloadTooLarge": 413,
}
_COCO_KEEP = {"PluginNotFound": 404, "InvalidRequestPath": 404, "PayloadTooLarge": 413}

AUTH_FAILED = "Attestation error: RCAR handshake Auth failed"
ATTEST_FAILED = "Attestation error: RCAR handshake Attest failed"


class KbsHttpError(CaiError):
    """A KBS failure that becomes ``{"type": ".../<variant>", "detail": ...}``.

    ``cause`` is the server-side reason: logged always, shown to the client only where the
    simulated Trustee shows it (CoCo style appends it to RCAR failures; 1.5 keeps it in logs).
    """

    def __init__(self, variant: str, detail: str, *, cause: str | None = None) -> None:
        super().__init__(f"{variant}: {detail}")
        self.variant = variant
        self.detail = detail
        self.cause = cause

    def status(self, style: ErrorStyle) -> int:
        if style == "coco":
            return _COCO_KEEP.get(self.variant, 401)
        return _OPENANOLIS_STATUS.get(self.variant, 500)

    def response(self, style: ErrorStyle) -> web.Response:
        detail = self.detail
        if style == "coco" and self.cause and self.variant == "AttestationError":
            detail = f"{detail}: {self.cause}"
        return web.Response(
            status=self.status(style),
            text=json.dumps(error_body(self.variant, detail)),
            content_type="application/json",
        )


def token_not_found() -> KbsHttpError:
    return KbsHttpError("TokenNotFound", "Attestation Token not found")


def token_invalid(cause: str) -> KbsHttpError:
    return KbsHttpError("TokenVerifierError", "Token Verifier error", cause=cause)


def invalid_path(path: str) -> KbsHttpError:
    return KbsHttpError("InvalidRequestPath", f"Request path {path} is invalid")
