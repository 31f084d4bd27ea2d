"""Domain enums and proto enums paired by name, and request fields naming them."""

from __future__ import annotations

import pytest

from easel.downloader.v1 import download_service_pb2 as pb
from services.common.errors import InvalidArgumentError
from services.common.proto_enums import EnumMap
from services.downloader.jobs import DownloadJobStatus

STATUS = EnumMap(DownloadJobStatus, pb.DownloadJobStatus)


def test_every_member_pairs_with_its_proto_value_both_ways():
    for member in DownloadJobStatus:
        number = STATUS.to_pb(member)
        assert pb.DownloadJobStatus.Name(number) == f"DOWNLOAD_JOB_STATUS_{member.name}"
        assert STATUS.from_pb(number) is member
    assert STATUS.to_pb(None) == 0
    assert STATUS.from_pb(0) is None


@pytest.mark.parametrize("number", [0, 99])
def test_unspecified_and_unknown_numbers_are_refused_with_the_field(number):
    with pytest.raises(InvalidArgumentError) as caught:
        STATUS.filter([pb.DOWNLOAD_JOB_STATUS_RUNNING, number], "statuses")
    assert caught.value.violations[0].field == "statuses"
