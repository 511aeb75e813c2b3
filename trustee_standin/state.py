"""Shared state of one stand-in instance (development and tests only)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from trustee_standin.admin import AdminAuth
from trustee_standin.ca import TestCa
from trustee_standin.config import StandinConfig
from trustee_standin.faults import FaultInjector
from trustee_standin.repository import ResourceRepository
from trustee_standin.sessions import SessionStore
from trustee_standin.tokens import TokenService


@dataclass
class StandinState:
    config: StandinConfig
    ca: TestCa
    tokens: TokenService
    sessions: SessionStore
    repository: ResourceRepository
    faults: FaultInjector
    admin: AdminAuth


STATE: web.AppKey[StandinState] = web.AppKey("trustee_standin_state", StandinState)
