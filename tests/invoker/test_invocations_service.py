"""InvocationService against a real invoker process: the schemas over gRPC are the ones
the classes give, paging and errors are as the proto says, and a custom node file dropped
into the folder appears after a restart and runs in a session (a broken one is skipped, the
server still serves)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import invocation_service_pb2 as pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from services.common import errors
from services.invoker.invocation_convert import invocation_type_to_pb
from services.invoker.invocations.registry import load_registry
from tests.invoker.custom_nodes import CUSTOM_NODE
from tests.processes import client_settings, wait_serving


def list_all(
    client: EaselClient, page_size: int = 0, category: str = ""
) -> list[pb.InvocationType]:
    types: list[pb.InvocationType] = []
    token = ""
    while True:
        request = pb.ListInvocationTypesRequest(
            page_size=page_size, page_token=token, category=category
        )
        response = client.invocations.ListInvocationTypes(request)
        types.extend(response.invocation_types)
        token = response.next_page_token
        if not token:
            return types


def test_the_types_over_grpc_are_the_classes_schemas(run_service, easel_env):
    wait_serving(run_service("invoker"))
    registry = load_registry(None)

    with EaselClient(client_settings(easel_env)) as client:
        listed = list_all(client)
        assert listed == [invocation_type_to_pb(spec) for spec in registry.specs()]
        assert list_all(client, page_size=4) == listed

        add = client.invocations.GetInvocationType(pb.GetInvocationTypeRequest(name="add"))
        as_json = json_format.MessageToDict(add.invocation_type)
        assert as_json["name"] == "add"
        assert as_json["category"] == "math"
        assert as_json["outputType"] == "integer_output"
        assert as_json["inputs"][0] == {
            "name": "a",
            "title": "A",
            "description": "The first number.",
            "type": "integer",
            "default": 0.0,
            "inputKind": "INPUT_KIND_ANY",
        }
        assert as_json["outputs"] == [
            {"name": "value", "title": "Value", "description": "The integer.", "type": "integer"}
        ]
        iterate = client.invocations.GetInvocationType(pb.GetInvocationTypeRequest(name="iterate"))
        index = iterate.invocation_type.inputs[1]
        assert (index.input_kind, index.constraints.minimum) == (pb.INPUT_KIND_DIRECT, 0)
        assert index.constraints.HasField("minimum")
        assert not index.constraints.HasField("maximum")
        image = client.invocations.GetInvocationType(pb.GetInvocationTypeRequest(name="image"))
        assert image.invocation_type.inputs[0].required
        assert not image.invocation_type.inputs[0].HasField("default")

        strings = list_all(client, category="string")
        assert [t.name for t in strings] == ["string_join", "string_replace"]
        assert list_all(client, category="nothing") == []


def test_bad_requests_get_the_errors_the_proto_names(run_service, easel_env):
    wait_serving(run_service("invoker"))

    with EaselClient(client_settings(easel_env)) as client:
        with pytest.raises(errors.NotFoundError) as caught:
            client.invocations.GetInvocationType(pb.GetInvocationTypeRequest(name="nope"))
        assert caught.value.metadata["name"] == "nope"
        with pytest.raises(errors.InvalidArgumentError) as caught:
            client.invocations.GetInvocationType(pb.GetInvocationTypeRequest())
        assert caught.value.violations[0].field == "name"
        with pytest.raises(errors.InvalidArgumentError) as caught:
            client.invocations.ListInvocationTypes(pb.ListInvocationTypesRequest(page_size=-1))
        assert caught.value.violations[0].field == "page_size"

        first = client.invocations.ListInvocationTypes(pb.ListInvocationTypesRequest(page_size=2))
        other_filter = pb.ListInvocationTypesRequest(
            page_size=2, page_token=first.next_page_token, category="math"
        )
        for request in (other_filter, pb.ListInvocationTypesRequest(page_token="garbage")):
            with pytest.raises(errors.InvalidArgumentError) as caught:
                client.invocations.ListInvocationTypes(request)
            assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_a_custom_node_file_appears_after_a_restart(run_service, easel_env):
    nodes = Path(easel_env["EASEL_ROOT"]) / "nodes"
    before = run_service("invoker")
    wait_serving(before)
    with EaselClient(client_settings(easel_env)) as client:
        names = [t.name for t in list_all(client)]
    assert "shout" not in names
    assert before.stop() == 0

    nodes.mkdir()
    (nodes / "shout.py").write_text(CUSTOM_NODE)
    (nodes / "broken.py").write_text("raise RuntimeError('this node is broken')\n")
    after = run_service("invoker")
    wait_serving(after)

    with EaselClient(client_settings(easel_env)) as client:
        shout = client.invocations.GetInvocationType(pb.GetInvocationTypeRequest(name="shout"))
        custom = list_all(client, category="custom")
    assert shout.invocation_type.output_type == "shout_output"
    assert [(f.name, f.type) for f in shout.invocation_type.inputs] == [("text", "string")]
    assert [t.name for t in custom] == ["shout"]
    log = after.log()
    assert "custom node file skipped" in log
    assert "RuntimeError: this node is broken" in log

    with EaselClient(client_settings(easel_env)) as client:
        graph = graph_pb2.Graph(nodes=[graph_pb2.Node(id="loud", type="shout")])
        graph.nodes[0].inputs.update({"text": "hello"})
        session = client.sessions.CreateSession(session_pb.CreateSessionRequest(graph=graph))
        session_id = session.session.id
        client.sessions.InvokeSession(session_pb.InvokeSessionRequest(session_id=session_id))
        wait = session_pb.WaitSessionRequest(session_id=session_id)
        done = client.sessions.WaitSession(wait, timeout=30).session
    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
    assert json_format.MessageToDict(done.state.results["loud"]) == {"text": "HELLO"}
