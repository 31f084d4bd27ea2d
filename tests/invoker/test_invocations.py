"""Node types as classes: the schemas read from them, the registry that finds them (custom
node files included), and each core node's invoke."""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.model_taxonomy import ModelType
from services.invoker.invocations import registry as registry_module
from services.invoker.invocations.arithmetic import (
    AddInvocation,
    DivideInvocation,
    MultiplyInvocation,
    RandomFloatInvocation,
    RandomIntInvocation,
    RangeInvocation,
    SubtractInvocation,
)
from services.invoker.invocations.base import (
    BaseInvocation,
    BaseOutput,
    InputField,
    InputKind,
    OutputField,
)
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef, ModelRef
from services.invoker.invocations.iteration import CollectInvocation, IterateInvocation
from services.invoker.invocations.model_defaults import default_model_key
from services.invoker.invocations.primitives import (
    BooleanInvocation,
    FloatInvocation,
    ImageInvocation,
    IntegerInvocation,
    ModelInvocation,
    StringInvocation,
)
from services.invoker.invocations.registry import (
    DuplicateInvocationTypeError,
    load_registry,
    node_types,
)
from services.invoker.invocations.schema import (
    NO_DEFAULT,
    Constraints,
    SchemaError,
    describe,
)
from services.invoker.invocations.strings import StringJoinInvocation, StringReplaceInvocation
from tests.invoker.custom_nodes import CUSTOM_NODE

CORE_TYPES = {
    "integer": "primitives",
    "float": "primitives",
    "string": "primitives",
    "boolean": "primitives",
    "image": "primitives",
    "model": "primitives",
    "add": "math",
    "sub": "math",
    "mul": "math",
    "div": "math",
    "rand_int": "math",
    "rand_float": "math",
    "range": "math",
    "string_join": "string",
    "string_replace": "string",
    "iterate": "collections",
    "collect": "collections",
    **dict.fromkeys(
        ["load_image", "save_image", "show_image", "resize", "crop", "paste", "blend"], "image"
    ),
    **dict.fromkeys(["convert", "blur", "extract_channel", "merge_channels"], "image"),
    "prompt": "conditioning",
    **dict.fromkeys(["noise", "denoise_latents", "l2i", "i2l"], "latents"),
    **dict.fromkeys(["txt2img", "img2img", "upscale"], "generation"),
    "lora_selector": "model",
}


class SizeOutput(BaseOutput):
    output_type: ClassVar[str] = "size_output"
    width: int = OutputField(description="Width in pixels.")
    label: str = OutputField(title="The Label", description="A label.")


class SizeInvocation(BaseInvocation):
    """Checks a size.

    Second paragraph.
    """

    invocation_type: ClassVar[str] = "check_size"
    category: ClassVar[str] = "image"
    tags: ClassVar[tuple[str, ...]] = ("size", "test")
    version: ClassVar[str] = "1.2.0"
    width: int = InputField(512, ge=64, le=2048, multiple_of=8, description="Width in pixels.")
    scale: float = InputField(1.0, gt=0, lt=4, title="Scale Factor", description="Scale.")
    name: str = InputField(min_length=1, max_length=20, description="A name; required.")
    mode: Literal["fit", "fill"] = InputField("fit", description="How to fit.")
    tags_in: list[str] = InputField([], max_length=3, description="Some tags.")
    latents: ImageRef | None = InputField(
        None, kind=InputKind.CONNECTION, description="Only by an edge."
    )
    seed: int = InputField(0, kind=InputKind.DIRECT, description="Only given directly.")

    async def invoke(self, context: InvocationContext) -> SizeOutput:
        return SizeOutput(width=self.width, label=self.name)


@pytest.fixture
def context() -> InvocationContext:
    """A context for nodes that use none of its services."""
    return InvocationContext(
        session_id="session",
        node_id="node",
        images=None,  # type: ignore[arg-type]
        inference=None,  # type: ignore[arg-type]
        models=None,  # type: ignore[arg-type]
        progress=lambda step, total, message="": None,
    )


def test_the_schema_is_read_from_the_class():
    spec = describe(SizeInvocation)

    assert (spec.name, spec.title, spec.category) == ("check_size", "Check Size", "image")
    assert spec.description == "Checks a size.\n\nSecond paragraph."
    assert (spec.tags, spec.version, spec.output_type) == (("size", "test"), "1.2.0", "size_output")
    assert spec.cacheable
    inputs = {field.name: field for field in spec.inputs}
    assert list(inputs) == ["width", "scale", "name", "mode", "tags_in", "latents", "seed"]
    width = inputs["width"]
    assert (width.type, width.required, width.default, width.title) == (
        "integer",
        False,
        512,
        "Width",
    )
    assert width.description == "Width in pixels."
    assert width.constraints == Constraints(minimum=64, maximum=2048, multiple_of=8)
    assert inputs["scale"].title == "Scale Factor"
    assert inputs["scale"].constraints == Constraints(exclusive_minimum=0, exclusive_maximum=4)
    name = inputs["name"]
    assert (name.type, name.required, name.default) == ("string", True, NO_DEFAULT)
    assert name.constraints == Constraints(min_length=1, max_length=20)
    assert inputs["mode"].type == "enum"
    assert inputs["mode"].constraints == Constraints(choices=("fit", "fill"))
    assert (inputs["tags_in"].type, inputs["tags_in"].default) == ("list[string]", [])
    assert inputs["tags_in"].constraints == Constraints(max_length=3)
    assert (inputs["latents"].type, inputs["latents"].input_kind) == (
        "image",
        InputKind.CONNECTION,
    )
    assert inputs["seed"].input_kind == InputKind.DIRECT
    assert inputs["width"].input_kind == InputKind.ANY
    outputs = [(f.name, f.title, f.type, f.required, f.input_kind) for f in spec.outputs]
    assert outputs == [
        ("width", "Width", "integer", False, None),
        ("label", "The Label", "string", False, None),
    ]


def test_the_class_enforces_its_constraints():
    SizeInvocation(name="a", width=64)
    for bad in ({"name": ""}, {"name": "a", "width": 60}, {"name": "a", "width": 4096}):
        with pytest.raises(ValidationError):
            SizeInvocation(**bad)
    with pytest.raises(ValidationError):
        SizeInvocation(name="a", mode="stretch")
    with pytest.raises(ValidationError, match="extra"):
        SizeInvocation(name="a", unknown=1)


def test_a_class_without_a_describable_schema_is_refused():
    class NoOutput(BaseInvocation):
        invocation_type: ClassVar[str] = "no_output"

        async def invoke(self, context):
            return None

    class OddField(BaseInvocation):
        invocation_type: ClassVar[str] = "odd_field"
        when: complex = InputField(0j, description="Not a field type.")

        async def invoke(self, context) -> SizeOutput:
            raise NotImplementedError

    with pytest.raises(SchemaError, match="must be annotated to return a BaseOutput"):
        describe(NoOutput)
    with pytest.raises(SchemaError, match=r"OddField.when: no field type"):
        describe(OddField)


def test_the_registry_holds_the_core_set_by_name():
    registry = load_registry(None)

    assert {spec.name: spec.category for spec in registry.specs()} == CORE_TYPES
    assert [spec.name for spec in registry.specs()] == sorted(CORE_TYPES)
    assert [spec.name for spec in registry.specs("string")] == ["string_join", "string_replace"]
    assert registry.get("add").cls is AddInvocation
    with pytest.raises(NotFoundError) as caught:
        registry.get("nope")
    assert caught.value.metadata == {"name": "nope"}
    with pytest.raises(InvalidArgumentError):
        registry.get("")


def test_every_core_field_says_what_it_means():
    for spec in load_registry(None).specs():
        assert spec.description, spec.name
        for field in (*spec.inputs, *spec.outputs):
            assert field.description, f"{spec.name}.{field.name}"


def test_random_saving_and_tensor_nodes_are_not_cacheable_and_the_rest_are():
    registry = load_registry(None)
    uncached = {spec.name for spec in registry.specs() if not spec.cacheable}
    saving = {"save_image", "show_image"}
    seeded = {"noise", "txt2img", "img2img"}  # an empty seed is random
    # Their outputs or inputs name inference tensors, which vanish with their process.
    tensors = {"prompt", "denoise_latents", "i2l", "l2i"}
    assert uncached == {"rand_int", "rand_float", *saving, *seeded, *tensors}


def test_iterate_and_collect_are_generic_in_the_item_type():
    registry = load_registry(None)
    iterate, collect = registry.get("iterate").spec, registry.get("collect").spec

    assert [(f.name, f.type) for f in iterate.inputs] == [
        ("collection", "list[T]"),
        ("index", "integer"),
    ]
    assert [(f.name, f.type) for f in iterate.outputs] == [
        ("item", "T"),
        ("index", "integer"),
        ("total", "integer"),
    ]
    assert [(f.name, f.type, f.input_kind) for f in collect.inputs] == [
        ("item", "T", InputKind.CONNECTION),
        ("collection", "list[T]", InputKind.ANY),
    ]
    assert [(f.name, f.type) for f in collect.outputs] == [("collection", "list[T]")]
    assert registry.get("range").spec.outputs[0].type == "list[integer]"


def test_a_custom_node_file_is_registered(tmp_path):
    (tmp_path / "shout.py").write_text(CUSTOM_NODE)
    (tmp_path / "_helper.py").write_text("raise RuntimeError('helpers are not imported')")

    registry = load_registry(tmp_path)

    spec = registry.get("shout").spec
    assert (spec.category, spec.output_type, spec.description) == (
        "custom",
        "shout_output",
        "Upper-cases a text.",
    )
    assert len(registry) == len(CORE_TYPES) + 1
    assert registry.get("shout").source == str(tmp_path / "shout.py")


def test_a_broken_custom_file_is_skipped_and_the_rest_loads(tmp_path):
    (tmp_path / "a_broken.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "b_syntax.py").write_text("def (:\n")
    (tmp_path / "c_bad_schema.py").write_text(
        CUSTOM_NODE.replace("shout", "whisper").replace("text: str", "text: complex")
    )
    (tmp_path / "d_good.py").write_text(CUSTOM_NODE)
    (tmp_path / "e_bad_default.py").write_text(
        CUSTOM_NODE.replace("shout", "mumble").replace('InputField(""', "InputField(object()")
    )

    with capture_logs() as logs:
        registry = load_registry(tmp_path)

    assert "shout" in registry
    assert "whisper" not in registry
    assert len(registry) == len(CORE_TYPES) + 1
    skipped = {
        Path(line["path"]).name: line["error"]
        for line in logs
        if line["event"] == "custom node file skipped" and line["log_level"] == "error"
    }
    assert sorted(skipped) == ["a_broken.py", "b_syntax.py", "c_bad_schema.py", "e_bad_default.py"]
    assert "No module named 'no_such_module_anywhere'" in skipped["a_broken.py"]
    assert "SyntaxError" in skipped["b_syntax.py"]
    assert "no field type" in skipped["c_bad_schema.py"]
    assert "easel_custom_nodes.a_broken" not in sys.modules
    assert "easel_custom_nodes.c_bad_schema" not in sys.modules
    assert "mumble" not in registry
    assert "PydanticSerializationError" in skipped["e_bad_default.py"]


def test_a_custom_type_whose_name_is_taken_is_refused(tmp_path):
    (tmp_path / "adder.py").write_text(
        CUSTOM_NODE.replace('"shout"', '"add"').replace("class ShoutInvocation", "class MyAdd")
    )
    (tmp_path / "one.py").write_text(CUSTOM_NODE)
    (tmp_path / "two.py").write_text(CUSTOM_NODE)

    with capture_logs() as logs:
        registry = load_registry(tmp_path)

    assert registry.get("add").cls is AddInvocation
    assert registry.get("shout").source == str(tmp_path / "one.py")
    refused = [
        (line["invocation_type"], Path(line["path"]).name, line["taken_by"])
        for line in logs
        if line["event"] == "custom invocation type refused: the name is taken"
    ]
    assert refused == [
        ("add", "adder.py", "services.invoker.invocations.arithmetic"),
        ("shout", "two.py", str(tmp_path / "one.py")),
    ]


def test_two_builtin_types_with_one_name_stop_the_start(monkeypatch):
    first = types.ModuleType("builtin_one")
    second = types.ModuleType("builtin_two")
    for module in (first, second):
        clone = type(
            "Add", (AddInvocation,), {"invocation_type": "add", "__module__": module.__name__}
        )
        module.Add = clone  # type: ignore[attr-defined]
    monkeypatch.setattr(registry_module, "_builtin_modules", lambda: [first, second])

    with pytest.raises(DuplicateInvocationTypeError, match="'add' is defined by both"):
        load_registry(None)


def test_only_classes_that_name_their_own_type_are_registered():
    module = types.ModuleType("custom_base")

    class Shared(BaseInvocation):
        """A base for other nodes, not a node itself."""

        async def invoke(self, context) -> SizeOutput:
            raise NotImplementedError

    Shared.__module__ = module.__name__
    module.Shared = Shared  # type: ignore[attr-defined]
    module.Imported = SizeInvocation  # type: ignore[attr-defined]
    assert node_types(module, "custom_base") == []


CASES = [
    (IntegerInvocation(value=7), {"value": 7}),
    (FloatInvocation(value=2.5), {"value": 2.5}),
    (StringInvocation(value="hi"), {"value": "hi"}),
    (BooleanInvocation(value=True), {"value": True}),
    (ImageInvocation(image=ImageRef(image_name="a.png")), {"image": {"image_name": "a.png"}}),
    (ModelInvocation(model=ModelRef(key="k1")), {"model": {"key": "k1"}}),
    (AddInvocation(a=2, b=3), {"value": 5}),
    (SubtractInvocation(a=2, b=3), {"value": -1}),
    (MultiplyInvocation(a=-4, b=3), {"value": -12}),
    (DivideInvocation(a=7, b=2), {"value": 3}),
    (DivideInvocation(a=7, b=-2), {"value": -3}),
    (DivideInvocation(a=-7, b=-2), {"value": 3}),
    (DivideInvocation(a=10**30 + 1, b=1), {"value": 10**30 + 1}),
    (RangeInvocation(start=0, stop=3), {"collection": [0, 1, 2]}),
    (RangeInvocation(start=0, stop=30, step=10), {"collection": [0, 10, 20]}),
    (RangeInvocation(start=3, stop=0, step=-1), {"collection": [3, 2, 1]}),
    (RangeInvocation(start=0, stop=0), {"collection": []}),
    (StringJoinInvocation(string_left="a", string_right="b"), {"value": "ab"}),
    (
        StringReplaceInvocation(string="a.b.A", search_string=".", replace_string="\\1"),
        {"value": "a\\1b\\1A"},
    ),
    (
        StringReplaceInvocation(string="Cat cat", search_string="CAT", replace_string="dog"),
        {"value": "Cat cat"},
    ),
    (
        StringReplaceInvocation(
            string="Cat cat", search_string="CAT", replace_string="dog", case_sensitive=False
        ),
        {"value": "dog dog"},
    ),
    (
        StringReplaceInvocation(
            string="a1b22", search_string=r"(\d+)", replace_string=r"<\1>", use_regex=True
        ),
        {"value": "a<1>b<22>"},
    ),
    (StringReplaceInvocation(string="abc", search_string=""), {"value": "abc"}),
    (IterateInvocation(collection=[5, 6, 7], index=1), {"item": 6, "index": 1, "total": 3}),
    (CollectInvocation(item=4, collection=[1, 2]), {"collection": [1, 2, 4]}),
    (CollectInvocation(), {"collection": []}),
]


@pytest.mark.parametrize(
    ("node", "expected"), CASES, ids=lambda v: getattr(v, "invocation_type", "")
)
async def test_each_core_node_computes_its_output(node, expected, context):
    output = await node.invoke(context)
    assert isinstance(output, describe(type(node)).output_class)
    assert output.model_dump(mode="json") == expected


@pytest.mark.parametrize(
    ("node", "field"),
    [
        (DivideInvocation(a=1, b=0), "b"),
        (RangeInvocation(step=0), "step"),
        (RandomIntInvocation(low=5, high=5), "high"),
        (RandomFloatInvocation(low=2, high=1), "high"),
        (StringReplaceInvocation(string="x", search_string="(", use_regex=True), "search_string"),
        (IterateInvocation(collection=[1], index=1), "index"),
    ],
)
async def test_a_node_given_impossible_inputs_names_the_field(node, field, context):
    with pytest.raises(InvalidArgumentError) as caught:
        await node.invoke(context)
    assert caught.value.violations[0].field == field


async def test_random_nodes_stay_within_their_bounds(context):
    random.seed(1)
    ints = {(await RandomIntInvocation(low=3, high=6).invoke(context)).value for _ in range(200)}
    assert ints == {3, 4, 5}
    floats = [
        (await RandomFloatInvocation(low=-1, high=1).invoke(context)).value for _ in range(50)
    ]
    assert all(-1 <= value <= 1 for value in floats)
    assert len(set(floats)) > 1


def test_an_empty_model_input_takes_the_default_model():
    configured = {ModelType.MAIN: "configured-key"}
    assert default_model_key("model", ModelType.MAIN, configured, ["a", "b"]) == "configured-key"
    assert default_model_key("vae", ModelType.VAE, configured, ["only"]) == "only"
    for installed in ([], ["a", "b"]):
        with pytest.raises(InvalidArgumentError) as caught:
            default_model_key("upscale_model", ModelType.UPSCALER, configured, installed)
        assert caught.value.reason == "MISSING_REQUIRED_INPUT"
        assert caught.value.violations[0].field == "upscale_model"
        assert caught.value.metadata == {"field": "upscale_model", "model_type": "upscaler"}


def test_custom_nodes_dir_is_under_the_root_by_default(tmp_path):
    from services.invoker.settings import InvokerSettings

    settings = InvokerSettings(root=tmp_path)
    assert settings.custom_nodes_dir == tmp_path.resolve() / "nodes"
    assert InvokerSettings(
        root=tmp_path, custom_nodes_dir=Path("/elsewhere")
    ).custom_nodes_dir == Path("/elsewhere")
