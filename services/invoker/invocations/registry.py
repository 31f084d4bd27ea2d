"""The registry of node types: every invocation class of this package, then those of the
custom-nodes folder, by type name.

A built-in type that cannot be described, or two built-ins with one name, is a bug of the
invoker and stops the start. Custom nodes are the user's: a file that fails to import or
holds a type that cannot be described is logged and skipped as a whole, and a custom type
whose name is taken (by a built-in or an earlier file, in name order) is refused with a log
line, so one bad file never keeps the server from starting.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import structlog

from services.common.errors import InvalidArgumentError, NotFoundError
from services.invoker import invocations
from services.invoker.invocations.base import BaseInvocation
from services.invoker.invocations.schema import InvocationSpec, SchemaError, describe

CUSTOM_PACKAGE = "easel_custom_nodes"
"""Parent name of the custom node modules (`easel_custom_nodes.<file stem>`)."""

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeType:
    """A registered node type: its class and the schema read from it."""

    cls: type[BaseInvocation]
    spec: InvocationSpec
    source: str
    """Module the class comes from (a custom node's file path)."""


class DuplicateInvocationTypeError(RuntimeError):
    """Two built-in node types share a type name."""


class InvocationRegistry:
    """Node types by type name; read-only once built."""

    def __init__(self, types: Iterable[NodeType] = ()) -> None:
        self._types: dict[str, NodeType] = {}
        for node_type in types:
            self._types[node_type.spec.name] = node_type

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> NodeType:
        """The type `name`; INVALID_ARGUMENT for an empty name, NOT_FOUND for an unknown one."""
        if not name:
            raise InvalidArgumentError("name must not be empty", field="name")
        try:
            return self._types[name]
        except KeyError:
            raise NotFoundError(
                f"no invocation type named {name!r}",
                reason="UNKNOWN_INVOCATION_TYPE",
                metadata={"name": name},
            ) from None

    def specs(self, category: str = "") -> list[InvocationSpec]:
        """Every type's schema (of one category when given), ordered by name."""
        return [
            self._types[name].spec
            for name in sorted(self._types)
            if not category or self._types[name].spec.category == category
        ]


def load_registry(custom_nodes_dir: Path | None) -> InvocationRegistry:
    """The built-in node types plus the custom ones found in `custom_nodes_dir`."""
    found: dict[str, NodeType] = {}
    for module in _builtin_modules():
        for node_type in node_types(module, module.__name__):
            if node_type.spec.name in found:
                raise DuplicateInvocationTypeError(
                    f"invocation type {node_type.spec.name!r} is defined by both "
                    f"{found[node_type.spec.name].source} and {node_type.source}"
                )
            found[node_type.spec.name] = node_type
    if custom_nodes_dir is not None and custom_nodes_dir.is_dir():
        for path in sorted(custom_nodes_dir.glob("*.py")):
            if not path.name.startswith(("_", ".")):
                _add_custom(path, found)
    return InvocationRegistry(found.values())


def node_types(module: ModuleType, source: str) -> list[NodeType]:
    """The node types a module defines (classes setting their own invocation_type)."""
    return [
        NodeType(value, describe(value), source)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseInvocation)
        and value.__module__ == module.__name__
        and "invocation_type" in vars(value)
    ]


def _builtin_modules() -> list[ModuleType]:
    names = sorted(info.name for info in pkgutil.iter_modules(invocations.__path__))
    return [importlib.import_module(f"{invocations.__name__}.{name}") for name in names]


def _add_custom(path: Path, found: dict[str, NodeType]) -> None:
    try:
        module = _import_file(path)
    except Exception as exc:
        log.error("custom node file skipped", path=str(path), error=f"{type(exc).__name__}: {exc}")
        return
    try:
        types = node_types(module, str(path))
    except Exception as exc:  # describing user code may fail in any way (a bad default, ...)
        del sys.modules[module.__name__]
        error = str(exc) if isinstance(exc, SchemaError) else f"{type(exc).__name__}: {exc}"
        log.error("custom node file skipped", path=str(path), error=error)
        return
    for node_type in types:
        name = node_type.spec.name
        if name in found:
            log.error(
                "custom invocation type refused: the name is taken",
                invocation_type=name,
                path=str(path),
                taken_by=found[name].source,
            )
            continue
        found[name] = node_type
        log.info("custom invocation type loaded", invocation_type=name, path=str(path))


def _import_file(path: Path) -> ModuleType:
    """Import one custom node file as `easel_custom_nodes.<stem>`."""
    name = CUSTOM_PACKAGE + "." + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the module's annotations through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
