"""The config file's YAML: safe tags only, duplicate keys refused, libyaml's parser when present.

PyYAML's own parser is pure Python and costs most of the time a large config takes to load;
libyaml's (in PyYAML's wheels) parses the same text several times faster, and the pure one stays
the fallback where PyYAML was built without it. Both feed the same resolver and constructors, so
they build the same objects from the same file (a test compares them on every config the project
ships). Figures: bench/RESULTS.md, "Config size".

A duplicate key is an error, not "the last one wins": a second `repository_id:` under one rule
must never silently replace the first. It is reported with its key path and line.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


def _construct_mapping(loader: yaml.SafeLoader, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
    # Built directly rather than by PyYAML's generator (which exists for self-referencing
    # mappings a config never has); a mapping that refers to itself is refused as recursive.
    loader.flatten_mapping(node)  # `<<` merge keys, as SafeLoader does
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            )
        if key in mapping:
            raise _DuplicateKey(key, key_node)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


def _construct_sequence(loader: yaml.SafeLoader, node: SequenceNode, deep: bool = False) -> list[Any]:
    return [loader.construct_object(child, deep=deep) for child in node.value]


def _construct_str(loader: yaml.SafeLoader, node: Node) -> Any:
    return node.value if type(node) is ScalarNode else loader.construct_scalar(node)  # type: ignore[arg-type]


def _strict(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    loader = type(f"Strict{base.__name__}", (base,), {})
    loader.add_constructor(MAP_TAG, _construct_mapping)
    loader.add_constructor(SEQ_TAG, _construct_sequence)
    loader.add_constructor(STR_TAG, _construct_str)
    return loader


PURE_LOADER = _strict(yaml.SafeLoader)
try:
    C_LOADER: type[yaml.SafeLoader] | None = _strict(yaml.CSafeLoader)
except AttributeError:  # PyYAML built without libyaml
    C_LOADER = None
LOADER = C_LOADER or PURE_LOADER


def loads(text: str, loader: type[yaml.SafeLoader] = LOADER) -> Any:
    """The one document in `text`; raises YamlProblem with the line (and key path) at fault."""
    parser = loader(text)
    root: Node | None = None
    try:
        with _gc_paused():
            root = parser.get_single_node()
            return None if root is None else parser.construct_document(root)
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
def _gc_paused() -> Iterator[None]:
    # Parsing allocates hundreds of thousands of small containers and no cycles; the collector's
    # passes over them cost more than the parse itself (bench/RESULTS.md).
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
