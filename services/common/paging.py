"""Page tokens for List… RPCs: opaque to clients, bound to the request that made them.

A token encodes the offset of the next page and a fingerprint of the request's other
fields, so a token reused with a different filter is refused instead of silently
returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json

from services.common.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use: 0 means the default, values above the maximum are capped."""
    if requested < 0:
        raise InvalidArgumentError("page_size must not be negative", field="page_size")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def next_page_token(offset: int, request_fingerprint: object) -> str:
    payload = json.dumps({"o": offset, "f": _digest(request_fingerprint)})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def page_offset(token: str, request_fingerprint: object) -> int:
    """The offset a token points at; 0 for no token."""
    if not token:
        return 0
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, digest = int(payload["o"]), payload["f"]
    except (ValueError, KeyError, TypeError):
        offset, digest = -1, None
    if offset < 0 or digest != _digest(request_fingerprint):
        raise InvalidArgumentError(
            "page_token was not issued for this request",
            field="page_token",
            reason="INVALID_PAGE_TOKEN",
        )
    return offset


def _digest(fingerprint: object) -> str:
    return hashlib.sha256(
        json.dumps(fingerprint, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
