"""The node command language without a server: words and quoting, commands made from
node type schemas (a custom type included), values checked against them, piping and
history references turned into AddNode links, completion, help and the terminal preview."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from PIL import Image
from rich.console import Console

from clients.cli.command_language.commands import CommandSet, commands_from_types, convert_value
from clients.cli.command_language.help import command_help, language_help
from clients.cli.command_language.plan import History, Link, commit, plan_line
from clients.cli.command_language.preview import half_block_preview
from clients.cli.command_language.repl import completions
from clients.cli.command_language.syntax import LanguageError, parse_line, split_words
from clients.cli.errors import ExitCode, report
from easel.invoker.v1 import invocation_service_pb2 as pb


def field(name: str, type_name: str, default=None, **extra) -> pb.FieldSchema:
    schema = pb.FieldSchema(name=name, type=type_name, description=f"the {name}", **extra)
    if default is not None:
        schema.default.CopyFrom(struct_pb2.Value(**default))
    return schema


def image_output() -> list[pb.FieldSchema]:
    return [field("image", "image"), field("width", "integer"), field("height", "integer")]


TYPES = [
    pb.InvocationType(
        name="txt2img",
        title="Text to Image",
        description="Generates an image from a prompt.",
        category="generation",
        inputs=[
            field("prompt", "string", {"string_value": ""}, input_kind=pb.INPUT_KIND_ANY),
            field(
                "steps",
                "integer",
                {"number_value": 30},
                constraints=pb.FieldConstraints(minimum=1, maximum=1000),
            ),
            field("cfg_scale", "float", {"number_value": 7.5}),
            field(
                "width",
                "integer",
                {"number_value": 512},
                constraints=pb.FieldConstraints(multiple_of=8, minimum=8),
            ),
            field("height", "integer", {"number_value": 512}),
            field("model", "model", {"null_value": 0}),
            field(
                "scheduler",
                "enum",
                {"string_value": "euler"},
                constraints=pb.FieldConstraints(choices=["euler", "ddim"]),
            ),
            field("tiled", "boolean", {"bool_value": False}),
        ],
        outputs=image_output(),
    ),
    pb.InvocationType(
        name="upscale",
        category="generation",
        inputs=[field("image", "image", required=True), field("model", "model", {"null_value": 0})],
        outputs=image_output(),
    ),
    pb.InvocationType(
        name="show_image",
        category="image",
        inputs=[field("image", "image", required=True)],
        outputs=image_output(),
    ),
    pb.InvocationType(
        name="noise",
        inputs=[field("seed", "integer", {"number_value": 0})],
        outputs=[field("noise", "latents"), field("width", "integer")],
    ),
    pb.InvocationType(
        name="denoise",
        inputs=[
            field("latents", "latents", required=True, input_kind=pb.INPUT_KIND_CONNECTION),
            field("noise", "latents", required=True, input_kind=pb.INPUT_KIND_CONNECTION),
            field("strength", "float", {"number_value": 1}, input_kind=pb.INPUT_KIND_DIRECT),
        ],
        outputs=[field("latents", "latents")],
    ),
    pb.InvocationType(
        name="collect_ints",
        inputs=[field("items", "list[integer]", {"list_value": {}})],
        outputs=[field("total", "integer")],
    ),
    # A custom node, as a file in the invoker's custom nodes folder would describe it.
    pb.InvocationType(
        name="shout",
        title="Shout",
        description="Upper-cases a text.",
        category="custom",
        inputs=[field("text", "string", {"string_value": ""})],
        outputs=[field("text", "string")],
    ),
]


@pytest.fixture
def commands() -> CommandSet:
    return commands_from_types(TYPES)


def plan(commands: CommandSet, line: str, history: History | None = None):
    return plan_line(parse_line(line), commands, history or History())


# --- words -----------------------------------------------------------------------------


def test_quotes_group_words_and_only_an_unquoted_bar_pipes():
    calls = parse_line(
        """txt2img --prompt "a cat | eating \\"sushi\\"" --steps=20|upscale | show_image"""
    )
    assert [call.name for call in calls] == ["txt2img", "upscale", "show_image"]
    prompt, steps = calls[0].options
    assert (prompt.name, prompt.values) == ("prompt", ['a cat | eating "sushi"'])
    assert (steps.name, steps.values) == ("steps", ["20"])
    assert [word.text for word in split_words("shout --text 'it''s' a\\ b")] == [
        "shout",
        "--text",
        "its",
        "a b",
    ]


def test_option_names_take_dashes_and_negative_numbers_are_values():
    (call,) = parse_line("txt2img --cfg-scale -1.5 --link image -1 image -ln -2")
    assert [(option.name, option.values) for option in call.options] == [
        ("cfg_scale", ["-1.5"]),
        ("link", ["image", "-1", "image"]),
        ("link_node", ["-2"]),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('txt2img --prompt "a cat', 'unclosed " quote starting at column 18'),
        ("txt2img | | upscale", "nothing at the middle"),
        ("| upscale", "nothing at the start"),
        ("txt2img |", "nothing at the end"),
        ("txt2img cat", "unexpected value 'cat'"),
        ("--prompt cat", "expected a command name"),
    ],
)
def test_malformed_lines_say_what_is_wrong(line: str, message: str):
    with pytest.raises(LanguageError) as caught:
        parse_line(line)
    assert message in caught.value.message


# --- commands and values -----------------------------------------------------------------


def test_commands_and_options_come_from_the_node_types(commands: CommandSet):
    assert commands.names() == sorted(item.name for item in TYPES)
    shout = commands.get("shout")
    assert shout.description == "Upper-cases a text."
    assert shout.options["text"].description == "the text"
    steps = commands.get("txt2img").options["steps"]
    assert (steps.type, steps.default, steps.minimum, steps.maximum) == ("integer", 30, 1, 1000)
    assert commands.get("txt2img").options["scheduler"].choices == ("euler", "ddim")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("txt2im", "unknown command 'txt2im' (did you mean txt2img?)"),
        ("txt2img --stepz 3", "txt2img has no option --stepz"),
        ("txt2img --steps many", "txt2img --steps expects an integer, got 'many'"),
        ("txt2img --steps 0", "txt2img --steps must be >= 1; got 0"),
        ("txt2img --width 100", "txt2img --width must be a multiple of 8; got 100"),
        ("txt2img --cfg-scale x", "txt2img --cfg_scale expects a number, got 'x'"),
        ("txt2img --scheduler lms", "must be one of euler, ddim; got 'lms'"),
        ("txt2img --tiled maybe", "expects true or false"),
        ("txt2img --prompt a cat", "takes one value, got 2 values (a cat) (quote a text"),
        ("txt2img --steps", "txt2img --steps takes one value, got no value"),
        ("txt2img --steps 2 --steps 3", "--steps is given twice"),
        ("upscale", "upscale needs --image (image): give --image VALUE"),
        ("noise | denoise", "denoise needs --latents (latents): pipe into it"),
        ("noise | denoise --noise xyz", "denoise --noise takes only a link"),
        ("noise | denoise --strength @-1", "--strength takes only a value, not a link"),
        ("txt2img | show_image --image @-2", "@-2 goes back 2 commands, but only 1 came before"),
        ("txt2img | show_image --image @9", "no node '9'"),
        ("txt2img | show_image --image @-1.picture", "txt2img has no output 'picture'"),
        ("txt2img | show_image --image @-1.width", "txt2img.width is integer, --image takes image"),
        ("noise | txt2img --steps 3 | upscale --image @-2", "noise has no output of type image"),
        ("txt2img | show_image --link image -1", "takes three values: FIELD NODE OUTPUT"),
    ],
)
def test_bad_lines_are_refused_with_a_clear_message_and_usage_exit_code(
    commands: CommandSet, line: str, message: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(LanguageError) as caught:
        plan(commands, line)
    assert message in caught.value.message
    assert report(caught.value) == ExitCode.USAGE == 2
    assert message in capsys.readouterr().err


def test_values_take_the_types_of_their_inputs(commands: CommandSet):
    (node,) = plan(
        commands,
        "txt2img --prompt 'a cat' --steps 20 --cfg_scale 6 --model key1 --tiled --scheduler ddim",
    )
    assert node.inputs == {
        "prompt": "a cat",
        "steps": 20,
        "cfg_scale": 6.0,
        "model": {"key": "key1"},
        "tiled": True,
        "scheduler": "ddim",
    }
    collect = commands.get("collect_ints")
    option = collect.options["items"]
    assert convert_value(collect, option, ["1", "2", "3"]) == [1, 2, 3]
    assert convert_value(collect, option, ["[4, 5]"]) == [4, 5]


# --- links -------------------------------------------------------------------------------


def test_a_pipe_links_every_matching_output_of_the_previous_command(commands: CommandSet):
    nodes = plan(
        commands, 'txt2img --prompt "a cat eating sushi" --steps 20 | upscale | show_image'
    )
    assert [(node.node_id, node.command.name) for node in nodes] == [
        ("1", "txt2img"),
        ("2", "upscale"),
        ("3", "show_image"),
    ]
    assert nodes[0].links == []
    assert nodes[1].links == [Link("1", "*", "*")]
    assert nodes[2].links == [Link("2", "*", "*")]


def test_history_references_link_named_outputs(commands: CommandSet):
    nodes = plan(
        commands,
        "noise --seed 3 | txt2img | denoise --latents @-2.noise --noise @1 | "
        "denoise --link noise -3 noise -ln 3",
    )
    assert nodes[2].links == [
        Link("1", "noise", "latents"),
        Link("1", "noise", "noise"),
        Link("2", "*", "*"),
    ]
    assert nodes[3].links == [Link("1", "noise", "noise"), Link("3", "*", "*")]


def test_history_reaches_back_into_earlier_lines_that_succeeded(commands: CommandSet):
    history = History()
    first = plan(commands, "txt2img --steps 2 | upscale", history)
    commit(history, first, succeeded={"1"})  # upscale failed: it is not referable
    second = plan(commands, "show_image", history)
    assert second[0].node_id == "3"
    assert second[0].links == [Link("1", "*", "*")]
    third = plan(commands, "txt2img | show_image --image @-2", history)
    assert third[1].links == [Link("1", "image", "image"), Link("3", "*", "*")]
    assert history.entries[-1][0] == "1"  # planning changes no history


# --- interactive help --------------------------------------------------------------------


def test_completion_offers_commands_options_and_choices(commands: CommandSet):
    assert completions(commands, "tx", "tx") == ["txt2img "]
    assert "help " in completions(commands, "", "")
    assert completions(commands, "txt2img | up", "up") == ["upscale "]
    assert completions(commands, "txt2img --st", "--st") == ["--steps "]
    assert completions(commands, "txt2img --scheduler ", "") == ["euler ", "ddim "]
    assert completions(commands, "help sh", "sh") == ["shout ", "show_image "]


def test_help_describes_the_language_and_each_command(commands: CommandSet):
    console = Console(width=200, record=True)
    console.print(language_help(commands))
    text = console.export_text()
    for expected in ("a | b", "@-N", "--link_node", "shout", "Upper-cases a text."):
        assert expected in text

    console.print(command_help(commands.get("txt2img")))
    text = console.export_text()
    for expected in (
        "usage: txt2img [OPTIONS]",
        "--steps INTEGER",
        "integer (>= 1, <= 1000)",
        "--scheduler {euler|ddim}",
        "Outputs: image (image), width (integer), height (integer)",
    ):
        assert expected in text


def test_the_terminal_preview_draws_two_pixels_per_cell(tmp_path: Path):
    path = tmp_path / "split.png"
    image = Image.new("RGB", (4, 4), (255, 0, 0))
    image.paste((0, 0, 255), (0, 2, 4, 4))
    image.save(path)
    preview = half_block_preview(path, columns=4)
    rows = preview.plain.splitlines()
    assert rows == ["▀▀▀▀", "▀▀▀▀"]
    styles = {str(span.style) for span in preview.spans}
    assert styles == {"#ff0000 on #ff0000", "#0000ff on #0000ff"}
