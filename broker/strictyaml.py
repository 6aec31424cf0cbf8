"""The config file's YAML: safe tags only, duplicate keys refused, libyaml's parser when present.

PyYAML's own parser is pure Python and costs most of the time a large config takes to load;
libyaml's (in PyYAML's wheels) parses the same text far faster, and the pure one stays
the fallback where PyYAML was built without it. Both feed the same resolver and constructors, so
they build the same objects from the same file (a test compares them on every config the project
ships). Figures: bench/RESULTS.md, "Config size".

A duplicate key is an error, not "the last one wins": a second `repository_id:` under one rule
must never silently replace the first. It is reported with its key path and line.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from broker.schema import join

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
STR_TAG = "tag:yaml.org,2002:str"


@dataclass
class YamlProblem(Exception):
    """Why a text is not acceptable YAML: `path` is the key path where known, else ''."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class _DuplicateKey(ConstructorError):
    def __init__(self, key: Any, key_node: Node) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", key_node.start_mark)
        self.key_node = key_node


def _mapping(loader: yaml.SafeLoader, node: MappingNode, build: Callable[[Node], Any]) -> dict[Any, Any]:
    """A mapping node's dict, its keys and values made by `build`; a key seen twice is refused."""
    loader.flatten_mapping(node)  # `<<` merge keys, as SafeLoader does
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = build(key_node)
        try:
            seen = key in mapping
        except TypeError:
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from None
        if seen:
            raise _DuplicateKey(key, key_node)
        mapping[key] = build(value_node)
    return mapping


def _construct_mapping(loader: yaml.SafeLoader, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
    # SafeLoader's own mappings, sets and merges all come through this method, so whatever the
    # loader builds by itself (inside an ordered map, say) refuses duplicates too.
    return _mapping(loader, node, lambda child: loader.construct_object(child, deep=deep))


def _strict(base: type[Any]) -> type[Any]:
    return type(f"Strict{base.__name__}", (base,), {"construct_mapping": _construct_mapping})


def _construct(loader: yaml.SafeLoader, root: Node) -> Any:
    """The objects of the tree under `root`, as `construct_document` builds them but without its
    per-node bookkeeping: plain strings, mappings and lists are built here, anything else by the
    loader's constructors. A node reached twice (an alias) gives the same object, built once; a
    node that contains itself is refused."""
    built: dict[int, Any] = {}
    building: set[int] = set()

    def build(node: Node) -> Any:
        kind = type(node)
        if kind is ScalarNode:
            return node.value if node.tag == STR_TAG else loader.construct_object(node)
        if id(node) in built:
            return built[id(node)]
        if id(node) in building:
            raise ConstructorError(
                None, None, "found a node that contains itself (recursive)", node.start_mark
            )
        building.add(id(node))
        if kind is MappingNode and node.tag == MAP_TAG:
            value: Any = _mapping(loader, cast(MappingNode, node), build)
        elif kind is SequenceNode and node.tag == SEQ_TAG:
            value = [build(child) for child in node.value]
        else:
            value = loader.construct_object(node, deep=True)
        building.discard(id(node))
        built[id(node)] = value
        return value

    return build(root)


PURE_LOADER = _strict(yaml.SafeLoader)
try:
    C_LOADER: type[Any] | None = _strict(yaml.CSafeLoader)
except AttributeError:  # PyYAML built without libyaml
    C_LOADER = None
LOADER = C_LOADER or PURE_LOADER


def loads(text: str, loader: type[Any] = LOADER) -> Any:
    """The one document in `text`; raises YamlProblem with the line (and key path) at fault."""
    parser = loader(text)
    root: Node | None = None
    try:
        with collector_paused():
            root = parser.get_single_node()
            return None if root is None else _construct(parser, root)
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        path = _path_to(root, exc.key_node) if root is not None else ""
        raise YamlProblem(path, f"{exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem("", f"invalid YAML: {_describe(exc)}") from None
    except RecursionError:
        raise YamlProblem("", "invalid YAML: nested too deeply") from None
    finally:
        parser.dispose()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the block (and back as it was after).

    Loading a config allocates hundreds of thousands of small containers and no cycles; the
    collector's passes over them cost more than the parse itself (bench/RESULTS.md). Pause it
    around the parse and whatever is built from its result, so the passes that follow see only
    what survives.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _describe(exc: yaml.YAMLError) -> str:
    """The error with its line numbers, the same shape from either parser (libyaml has no snippet)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text:
            parts.append(f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text)
    return ": ".join(parts)


def _path_to(root: Node, target: Node) -> str:
    """The key path of `target` (a key node) in the tree under `root`; '' if not found."""
    stack: list[tuple[Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias: its node was already searched
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                child = join(path, key_node.value if isinstance(key_node, ScalarNode) else "?")
                if key_node is target:
                    return child
                stack.append((value_node, child))
        elif isinstance(node, SequenceNode):
            stack.extend((item, join(path, i)) for i, item in enumerate(node.value))
    return ""
