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


class DuplicateKey(yaml.YAMLError):
    """A mapping gives one key twice: YAML would silently keep the last value."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key '{key}' given twice (line {first} and line {second})")
        self.key, self.first, self.second = key, first, second


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
            continue  # a merge key (<<: *base) may repeat and overrides on purpose
        try:
            if key in lines:
                raise DuplicateKey(key, lines[key], line)
        except TypeError:  # an unhashable key: SafeLoader has refused it already
            pass
        lines[key] = line
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
    if path.is_dir():
        raise VseamError(f"{path}: is a folder, not a YAML file", hint="give the path of the spec file itself")
    if not path.exists():
        raise VseamError(f"{path}: file not found", hint="check the path")
    if not path.is_file():
        raise VseamError(f"{path}: not a regular file (a device or pipe)", hint="give the path of a YAML file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise VseamError(f"{path}: cannot read it: {e.strerror or e}") from None
    return parse_yaml(decode_text(raw, str(path)), str(path))


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text of a YAML file (a UTF-8 byte-order mark is allowed); anything else is one error
    naming the line and byte, not a UnicodeDecodeError."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(source, ["the file is UTF-16; save it as UTF-8"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError(source, [f"not UTF-8 text: byte 0x{raw[e.start]:02x} on line {line} cannot be decoded; "
                                 "save the file as UTF-8"]) from None


def parse_yaml(text: str, source: str) -> LoadedYaml:
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        data = loader.get_single_data()
    except DuplicateKey as e:
        raise SpecError(source, [f"{e} (a YAML mapping keeps only the last value silently; remove one)"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [f"YAML syntax error{where}: {problem}"]) from None
    finally:
        loader.dispose()
    return LoadedYaml(data, loader.key_lines)


def format_validation_error(err: ValidationError, doc: LoadedYaml | None, model_fields: Any = None,
                            overrides: dict[str, str] | None = None) -> list[str]:
    """One `field.path: message (line N)` string per field, with a close-match hint for unknown keys.

    Locations are given as the user wrote them: pydantic's union-member steps (a discriminated
    union's tag such as `linear`, or `float` / `literal['auto']` for `float | "auto"`) are dropped,
    and the alternatives' messages for one field are joined into one line. `overrides` (dotted key
    → the `--set` item) names the override for a field it set, instead of a YAML line. An unknown
    tag of a discriminated union (`policy: nope`) reads as the valid values in words.
    """
    overrides = overrides or {}
    by_path: dict[str, list[str]] = {}
    lines: dict[str, int | None] = {}
    for e in err.errors():
        raw = tuple(e["loc"])
        loc, _ = _user_loc(model_fields, raw)
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            ctx = e.get("ctx") or {}
            tag_field = str(ctx.get("discriminator", "")).strip("'\"")
            loc = (*loc, tag_field) if tag_field else loc
            path = ".".join(str(p) for p in loc)
            valid = [t.strip().strip("'\"") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
            words = ", ".join(valid[:-1]) + (f" or {valid[-1]}" if len(valid) > 1 else "".join(valid))
            msg = f"unknown {tag_field or 'kind'} '{ctx.get('tag')}'; use {words}"
        if e["type"] == "extra_forbidden" and model_fields is not None:
            allowed = sorted({f for m in _user_loc(model_fields, raw[:-1])[1] for f in m.model_fields})
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
            msg = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        key = path or "(top level)"
        if msg not in by_path.setdefault(key, []):
            by_path[key].append(msg)
        lines.setdefault(key, doc.line_of(loc) if doc is not None else None)
    where = {key: _override_of(key, overrides) or (f"line {lines[key]}" if lines[key] else "") for key in by_path}
    return [f"{key}: {'; or '.join(msgs)}" + (f" ({where[key]})" if where[key] else "") for key, msgs in by_path.items()]


def _override_of(key: str, overrides: dict[str, str]) -> str:
    """`from --set a.b=v` when an override set this field or a section holding it."""
    for k, item in overrides.items():
        if key == k or key.startswith(k + ".") or k.startswith(key + "."):
            return f"from --set {item}"
    return ""


def _models_in(annotation: Any) -> list[type]:
    """The pydantic models an annotation can hold, looking through Optional, unions, lists and Annotated."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type] = []
    for arg in typing.get_args(annotation):
        out += [m for m in _models_in(arg) if m not in out]
    return out


def _tag_of(model: type, value: Any) -> bool:
    """Whether `value` is the discriminator tag of `model` (a Literal field with that one value)."""
    import typing

    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is typing.Literal and typing.get_args(f.annotation) == (value,):
            return True
    return False


def _user_loc(model: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[type]]:
    """Drop union-member steps from a pydantic location; also return the models at its end."""
    if model is None:
        return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-"))), []
    candidates: list[type] = [model]
    out: list[Any] = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)  # a list index; the candidates already are the element's models
            continue
        fields = [m.model_fields[part] for m in candidates if part in m.model_fields]
        if fields:
            out.append(part)
            candidates = [m for f in fields for m in _models_in(f.annotation)]
            continue
        tagged = [m for m in candidates if _tag_of(m, part)]
        if tagged:
            candidates = tagged  # a discriminated union's member tag
        elif not candidates:
            continue  # a plain union's member name (float, literal['auto'], function-after[...])
        else:
            out.append(part)  # an unknown key
            candidates = []
    return tuple(out), candidates

