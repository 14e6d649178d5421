"""Secrets for API and worker tokens: shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

API_TOKEN_PREFIX = "cma_"
WORKER_TOKEN_PREFIX = "cmw_"


def new_secret(prefix: str) -> str:
    # 32 random bytes: a hash of it cannot be brute-forced, so no slow KDF is needed.
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
