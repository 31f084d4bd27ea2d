"""Paging of List… RPCs, in one place: page size rules and opaque page tokens.

A token encodes the offset of the next page and a fingerprint of the request's other
fields, so a token reused with a different filter is refused instead of silently
returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.common.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """Where the requested page starts and how long it may be."""

    offset: int
    size: int
    fingerprint: object

    def next_token(self, total: int) -> str:
        """The token of the page after this one among `total` items; "" when this is the last."""
        following = self.offset + self.size
        if following >= total:
            return ""
        return position_token(following, self.fingerprint)


def position_token(position: int, fingerprint: object) -> str:
    """A token whose page starts at `position`: an offset, or for keyset paging (stable
    while items change) the key after which the next page starts; `page` reads it back
    as `Page.offset`."""
    payload = json.dumps({"o": position, "f": _digest(fingerprint)})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def page(page_size: int, page_token: str, fingerprint: object) -> Page:
    """The page a request asks for.

    `page_size` 0 means the default and values above the maximum are capped; `fingerprint`
    holds the request's other fields (its filter), which the token must have been issued
    for.
    """
    if page_size < 0:
        raise InvalidArgumentError("page_size must not be negative", field="page_size")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return Page(_offset(page_token, fingerprint), size, fingerprint)


def paginate(
    items: Sequence[T], page_size: int, page_token: str, fingerprint: object
) -> tuple[list[T], str]:
    """The requested page of `items` (all matches, in order) and the next page's token."""
    requested = page(page_size, page_token, fingerprint)
    chosen = list(items[requested.offset : requested.offset + requested.size])
    return chosen, requested.next_token(len(items))


def _offset(token: str, fingerprint: object) -> int:
    if not token:
        return 0
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, digest = int(payload["o"]), payload["f"]
    except (ValueError, KeyError, TypeError):
        offset, digest = -1, None
    if offset < 0 or digest != _digest(fingerprint):
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
