"""Reading a YAML file safely: plain data only (a SafeLoader, so no tag builds an object), and bounded, so a
few lines of aliases that expand to billions of values, or nesting thousands of levels deep, are refused with
one line instead of exhausting memory or the stack. Presets and run folders' config.yaml are read with it."""

from __future__ import annotations

from typing import Any

import yaml

from agecli.errors import AgeCliError

# What a YAML file agecli reads may hold once its aliases are expanded. Presets have a few hundred values, nested
# four or five levels; ten levels of ten aliases (a "billion laughs") stand for 10^10 values in a few lines.
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 32


def read_yaml(source) -> Any:
    """The data of a YAML file (a preset, a run's config.yaml), or one line naming the file: not UTF-8, not YAML, a
    tag such as !!python/object, aliases that expand past YAML_MAX_VALUES values, nesting past YAML_MAX_DEPTH."""
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AgeCliError(f"{source}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") \
            from None
    except OSError as err:
        raise AgeCliError(f"{source}: cannot read ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise AgeCliError(f"{source}:{where} is not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise AgeCliError(f"{source}: nested more than {YAML_MAX_DEPTH} levels deep") from None
    except YamlTooLarge as err:
        raise AgeCliError(f"{source}: {err}") from None


def yaml_snippet(text: str, default: Any) -> Any:
    """The data of a line of YAML (a --set value in flow style), with read_yaml's bounds; `default` when it is
    not valid YAML or past the bounds."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except (yaml.YAMLError, RecursionError, YamlTooLarge):
        return default


class YamlTooLarge(Exception):
    """A YAML document whose aliases expand, or whose nesting goes, past the bounds of read_yaml."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that measures the composed document, aliases expanded, before building any of it."""

    depth = 0

    def compose_node(self, parent, index):
        """Stops a deeply nested document at YAML_MAX_DEPTH, before the composer's recursion goes deeper."""
        self.depth += 1
        try:
            if self.depth > YAML_MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlTooLarge(f"nested more than {YAML_MAX_DEPTH} levels deep (line {line})")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        check_yaml_size(node)
        return super().construct_document(node)


def check_yaml_size(root: yaml.Node) -> None:
    """Counts the values and levels the node graph stands for, each shared (aliased) node measured once, without
    recursion; raises YamlTooLarge past the bounds or on an alias that contains itself."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once measured
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _yaml_children(node)
        if children_done:
            open_nodes.discard(id(node))
            values = 1 + sum(sizes[id(c)][0] for c in children)
            depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
            if values > YAML_MAX_VALUES:
                line = node.start_mark.line + 1
                raise YamlTooLarge(f"aliases expand to more than {YAML_MAX_VALUES:,} values (line {line})")
            if depth > YAML_MAX_DEPTH:
                raise YamlTooLarge(f"nested more than {YAML_MAX_DEPTH} levels deep (line {node.start_mark.line + 1})")
            sizes[id(node)] = (values, depth)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise YamlTooLarge(f"an alias contains itself (line {node.start_mark.line + 1})")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _yaml_children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
