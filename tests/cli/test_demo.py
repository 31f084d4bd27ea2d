"""A new user's first image through the real model manager, inference and invoker:
`easel demo install` builds and installs the tiny models and makes them the defaults (over
another main model installed before, which would otherwise leave txt2img no default), the
issue's `easel gen` line saves a PNG under the root's outputs with its graph inside, and
a second `easel demo install` installs nothing new."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from clients.sdk import EaselClient
from easel.invoker.v1 import invocation_service_pb2 as invocation_pb
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from tests.cli.conftest import Easel
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model
from tests.processes import client_settings, wait_serving

LINE = 'txt2img --prompt "a cat eating sushi" --steps 20 --seed 1234 | upscale | show_image'


def test_demo_install_then_the_gen_line_saves_an_image_with_its_graph(
    run_service, easel_env: dict[str, str], easel: Easel, model_zoo: ModelZoo
):
    for service in [run_service(name) for name in ("model_manager", "inference", "invoker")]:
        wait_serving(service)
    root = Path(easel_env["EASEL_ROOT"])
    with EaselClient(client_settings(easel_env)) as client:
        register_model(
            client,
            "another-sd1",
            model_zoo.sd1_diffusers,
            base=m.BASE_MODEL_TYPE_SD_1,
            type=m.MODEL_TYPE_MAIN,
            format=m.MODEL_FORMAT_DIFFUSERS,
            repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
        )

        installed = easel.ok("demo", "install").stdout
        keys = dict(re.findall(r"installed (\S+) as (\w+)", installed))
        assert set(keys) == {"easel-demo-sd1", "easel-demo-esrgan-x2"}
        defaults = client.invocations.ListDefaultModels(invocation_pb.ListDefaultModelsRequest())
        assert {(d.model_type, d.model_key) for d in defaults.default_models} == {
            (m.MODEL_TYPE_MAIN, keys["easel-demo-sd1"]),
            (m.MODEL_TYPE_UPSCALER, keys["easel-demo-esrgan-x2"]),
        }
        assert not list(root.glob(".easel-demo-*"))  # the build folder is gone

        generated = easel.ok("gen", "--no-viewer", LINE).stdout
        (saved,) = re.findall(r"saved (\S+\.png)", generated)
        path = Path(saved)
        assert path.parent == root / "outputs"
        with Image.open(path) as image:
            assert image.size == (1024, 1024)  # 512 from txt2img, doubled by the upscaler
            graph = json.loads(image.info["easel_graph"])
        nodes = {node["id"]: node for node in graph["nodes"]}
        assert [node["type"] for node in nodes.values()] == ["txt2img", "upscale", "show_image"]
        assert nodes["1"]["inputs"] == {"prompt": "a cat eating sushi", "steps": 20, "seed": 1234}
        edges = {(e["source"]["node_id"], e["destination"]["node_id"]) for e in graph["edges"]}
        assert edges == {("1", "2"), ("2", "3")}
        assert {e["source"]["field"] for e in graph["edges"]} == {"image"}

        again = easel.ok("demo", "install").stdout
        assert "installed" not in again
        assert f"default main model: easel-demo-sd1 ({keys['easel-demo-sd1']})" in again
        named = client.model_records.ListModels(records_pb.ListModelsRequest(name="easel-demo-sd1"))
        assert len(named.models) == 1
