"""Paging of List… RPCs: sizes, tokens bound to their request, the last page."""

from __future__ import annotations

import pytest

from services.common import paging
from services.common.errors import InvalidArgumentError


def all_pages(items: list[int], size: int, fingerprint: object) -> list[list[int]]:
    pages, token = [], ""
    while True:
        page, token = paging.paginate(items, size, token, fingerprint)
        pages.append(page)
        if not token:
            return pages


def test_pages_walk_every_item_once_and_the_last_has_no_token():
    items = list(range(7))
    assert all_pages(items, 3, ["filter"]) == [[0, 1, 2], [3, 4, 5], [6]]
    assert all_pages(items, 7, ["filter"]) == [items]
    assert all_pages([], 3, ["filter"]) == [[]]


def test_page_size_zero_means_the_default_and_large_sizes_are_capped():
    items = list(range(paging.MAX_PAGE_SIZE + 5))
    page, token = paging.paginate(items, 0, "", None)
    assert len(page) == paging.DEFAULT_PAGE_SIZE
    assert token
    page, _ = paging.paginate(items, paging.MAX_PAGE_SIZE * 10, "", None)
    assert len(page) == paging.MAX_PAGE_SIZE


def test_a_page_of_a_store_query_knows_its_offset_size_and_next_token():
    first = paging.page(2, "", {"name": "x"})
    assert (first.offset, first.size) == (0, 2)
    second = paging.page(2, first.next_token(total=5), {"name": "x"})
    assert second.offset == 2
    assert second.next_token(total=4) == ""


@pytest.mark.parametrize(
    ("page_size", "token", "field"),
    [(-1, "", "page_size"), (2, "not-a-token", "page_token"), (2, "OTHER", "page_token")],
)
def test_bad_sizes_and_tokens_are_refused_naming_the_field(page_size, token, field):
    if token == "OTHER":  # a real token, issued for a different filter
        token = paging.page(2, "", ["other filter"]).next_token(total=5)
    with pytest.raises(InvalidArgumentError) as caught:
        paging.paginate(list(range(5)), page_size, token, ["filter"])
    assert [v.field for v in caught.value.violations] == [field]
