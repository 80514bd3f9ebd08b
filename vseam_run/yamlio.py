"""Safe YAML loading with line numbers, and turning pydantic errors into `field.path: message` lines."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vseam_run.errors import SpecError, VseamError


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, so errors can point into the file."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        lines[key] = key_node.start_mark.line + 1
    loader.key_lines[id(mapping)] = (mapping, lines)
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class LoadedYaml:
    """A parsed YAML document plus a lookup from a field path to its line in the file."""

    def __init__(self, data: Any, key_lines: dict[int, tuple[dict, dict]]) -> None:
        self.data = data
        self._key_lines = key_lines

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        node, line = self.data, None
        for part in loc:
            if isinstance(node, dict):
                entry = self._key_lines.get(id(node))
                if entry is None or part not in node:
                    break
                line = entry[1].get(part, line)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
        return line


def load_yaml(path: Path) -> LoadedYaml:
    """Safe-load a YAML file; a missing file or a syntax error is a VseamError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise VseamError(f"{path}: file not found", hint="check the path")
    text = path.read_text(encoding="utf-8")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> LoadedYaml:
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [f"YAML syntax error{where}: {problem}"]) from None
    finally:
        loader.dispose()
    return LoadedYaml(data, loader.key_lines)


def format_validation_error(err: ValidationError, doc: LoadedYaml | None, model_fields: Any = None) -> list[str]:
    """One `field.path: message (line N)` string per error, with a close-match hint for unknown keys."""
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        # Drop discriminator tags pydantic inserts into the location (e.g. 'linear' in a union).
        path = ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and model_fields is not None:
            allowed = _allowed_keys(model_fields, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
            if allowed:
                msg += f" (allowed: {', '.join(sorted(allowed))})"
        line = doc.line_of(loc) if doc is not None else None
        out.append(f"{path or '(top level)'}: {msg}" + (f" (line {line})" if line else ""))
    return out


def _allowed_keys(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) pydantic model at `loc`, for "did you mean" hints."""
    import typing

    from pydantic import BaseModel

    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            # A discriminated-union tag: pick the member whose tag matches.
            return []
        ann = field.annotation
        candidates = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            args = [a for a in typing.get_args(ann)]
            for a in args:
                candidates += [b for b in (typing.get_args(a) or (a,)) if isinstance(b, type) and issubclass(b, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []
