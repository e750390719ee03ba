"""Read rule packs from YAML, reporting every problem of every file with ``file:line:col``.

The YAML is composed into nodes first (safe loader only: tags never run code) so each pydantic
error can be mapped back to the node it is about: the key for an unknown key, the value for a bad
value, the enclosing mapping for a missing key. PyYAML silently keeps the last of two equal keys;
the node walk catches that too. Parsing is all-or-nothing: :func:`parse_paths` returns every pack
or every error, never a half-loaded set of rules. What the engine would still refuse (patterns,
detectors) is checked after this, by the one compile step in :mod:`watcher.rulepack.compile`.
"""

from __future__ import annotations

import difflib
import threading
import typing
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from watcher.rulepack.schema import CHECK_DUPLICATE_IDS, STRICT_DURATIONS, Origin, RulePack

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # after alias expansion: what validation would have to walk
MAX_DEPTH = 64
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_CONTEXT = {CHECK_DUPLICATE_IDS: False, STRICT_DURATIONS: True}


@dataclass(frozen=True, slots=True, order=True)
class LintError:
    """One problem at one place; prints the way compilers and promtool do."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class RulePackError(Exception):
    """Loading refused: carries every error found, in file order then line order."""

    def __init__(self, errors: Sequence[LintError]) -> None:
        self.errors: tuple[LintError, ...] = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def parse_paths(paths: Sequence[Path]) -> tuple[list[RulePack], list[LintError]]:
    """Every pack of these files (or directories of ``*.yaml``/``*.yml``), or every error in them
    (pack names, series names and rule ids must be unique across them)."""
    parsed = [_parse_file(path) for path in _expand(paths)]
    extra = _duplicate_errors(parsed)
    errors: list[LintError] = []
    order = {p.file: i for i, p in enumerate(parsed)}
    for p in parsed:
        errors.extend(p.errors)
    errors.extend(extra)
    errors.sort(key=lambda e: (order.get(e.file, len(order)), e.line, e.col, e.message))
    packs = [p.pack for p in parsed if p.pack is not None]
    return (packs if not errors else []), errors


def parse_text(text: str, file: str = "<string>") -> tuple[list[RulePack], list[LintError]]:
    """One pack given as text: the pack, or its errors in line order."""
    result = _parse_text(text, file)
    errors = sorted(result.errors + _duplicate_errors([result]), key=lambda e: (e.line, e.col, e.message))
    return ([result.pack] if result.pack is not None and not errors else []), errors


# --------------------------------------------------------------------------------------- internals


@dataclass
class _Parsed:
    file: str
    root: yaml.Node | None
    pack: RulePack | None
    errors: list[LintError]


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files


def _parse_file(path: Path) -> _Parsed:
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _fail(file, f"file is {size} bytes; a rule pack may be at most {MAX_FILE_BYTES} bytes (1 MiB)")
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return _fail(file, f"cannot read file: {exc.strerror or exc}")
    if len(raw) > MAX_FILE_BYTES:
        return _fail(file, f"file is larger than {MAX_FILE_BYTES} bytes; a rule pack may be at most 1 MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _fail(file, f"file is not UTF-8 (byte {exc.start})")
    return _parse_text(text, file)


def _fail(file: str, message: str, line: int = 1, col: int = 1) -> _Parsed:
    return _Parsed(file, None, None, [LintError(file, line, col, message)])


def _parse_text(text: str, file: str) -> _Parsed:
    if len(text.encode()) > MAX_FILE_BYTES:
        return _fail(file, f"text is larger than {MAX_FILE_BYTES} bytes; a rule pack may be at most 1 MiB")
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            return _fail(file, "empty file: a rule pack needs at least pack and rules")
        errors = _check_nodes(file, root)
        if any(e.message.startswith("YAML:") for e in errors):
            return _Parsed(file, root, None, errors)  # aliases too deep, cyclic or too many: stop here
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        return _Parsed(file, None, None, [_yaml_error(file, exc)])
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        return _fail(
            file, f"YAML: unacceptable character #x{exc.character:04x}: special characters are not allowed", line, col
        )
    except yaml.YAMLError as exc:
        return _fail(file, f"YAML: {exc}")
    except RecursionError:
        return _fail(file, "YAML: nesting is too deep")
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        return _Parsed(file, root, None, [*errors, _at(file, root, "a rule pack is a mapping with pack and rules")])
    try:
        pack = RulePack.model_validate(data, context=_CONTEXT)
    except ValidationError as exc:
        errors.extend(_validation_errors(file, root, exc))
        return _Parsed(file, root, None, errors)
    _attach_origins(file, root, pack)
    return _Parsed(file, root, None if errors else pack, errors)


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _yaml_error(file: str, exc: yaml.MarkedYAMLError) -> LintError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    message = f"YAML: {problem}"
    if exc.context and exc.problem and exc.context_mark is not None:
        cm = exc.context_mark
        message += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return LintError(file, line, col, message)


def _at(file: str, node: yaml.Node, message: str) -> LintError:
    return LintError(file, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _check_nodes(file: str, root: yaml.Node) -> list[LintError]:
    """Duplicate keys, plus limits that keep alias tricks (billion laughs, cycles) out of validation."""
    errors: list[LintError] = []
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def walk(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise _NodeLimit(node, "YAML: an alias refers to a node that contains it (cyclic)")
        if depth > MAX_DEPTH:
            raise _NodeLimit(node, f"YAML: nesting deeper than {MAX_DEPTH} levels")
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if k.tag == _MERGE:
                    pass
                elif not isinstance(k, yaml.ScalarNode) or k.tag != _STR:
                    kind = k.tag.rsplit(":", 1)[-1]
                    shown = k.value if isinstance(k, yaml.ScalarNode) else kind
                    errors.append(_at(file, k, f"key {shown!r} is not a string (YAML reads it as {kind}); quote it"))
                else:
                    if k.value in seen:
                        first = seen[k.value].start_mark
                        errors.append(
                            _at(file, k, f"duplicate key {k.value!r} (first at {first.line + 1}:{first.column + 1})")
                        )
                    seen[k.value] = k
                total += walk(k, depth + 1) + walk(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += walk(item, depth + 1)
        in_progress.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise _NodeLimit(node, f"YAML: document expands to more than {MAX_NODES} nodes (aliases?)")
        return total

    try:
        walk(root, 0)
    except _NodeLimit as limit:
        errors.append(_at(file, limit.node, limit.message))
    return errors


class _NodeLimit(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


# ------------------------------------------------------------------------- pydantic error -> node

_UNION_LISTS = {"rules", "then"}  # list fields whose items are tagged unions (pydantic puts the tag in loc)


def _strip_tags(loc: Sequence[int | str]) -> list[int | str]:
    """Drop the union tag pydantic inserts after ``rules[i]`` and ``then[j]``: it is no YAML key."""
    out: list[int | str] = []
    i = 0
    while i < len(loc):
        seg = loc[i]
        out.append(seg)
        if isinstance(seg, int) and len(out) >= 2 and out[-2] in _UNION_LISTS and i + 1 < len(loc):
            i += 1  # skip the tag
        i += 1
    return out


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for seg in loc:
        text += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if text else str(seg))
    return text


_Index = dict[str, tuple[yaml.Node, yaml.Node]]
_indexes: weakref.WeakKeyDictionary[yaml.Node, _Index] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


def _index(node: yaml.MappingNode) -> _Index:
    """Key -> (key node, value node) of a mapping, built once: a lookup per error would otherwise
    scan the mapping, and a pack with thousands of unknown keys would lint in quadratic time."""
    with _indexes_lock:
        found = _indexes.get(node)
        if found is None:
            found = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    found[k.value] = (k, v)  # the last of duplicate keys wins, as PyYAML keeps it
            _indexes[node] = found
        return found


def _child(node: yaml.Node, seg: int | str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of ``seg`` under ``node``; the last of duplicate keys, as PyYAML keeps."""
    if isinstance(node, yaml.MappingNode):
        return _index(node).get(str(seg), (None, None))
    if isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
        return None, node.value[seg]
    return None, None


def _walk(root: yaml.Node, loc: Sequence[int | str]) -> tuple[yaml.Node, yaml.Node | None]:
    """The deepest node reached along ``loc``, and the key node of the last step if it was found."""
    node, key = root, None
    for seg in loc:
        k, v = _child(node, seg)
        if v is None:
            return node, None
        node, key = v, k
    return node, key


def _validation_errors(file: str, root: yaml.Node, exc: ValidationError) -> Iterable[LintError]:
    for err in exc.errors(include_url=False, include_input=False):
        raw_loc = list(err["loc"])
        if "[key]" in raw_loc or err["type"] == "invalid_key":
            continue  # a non-string key, already reported by _check_nodes with a better message
        if err["type"] == "detector_params":
            # The detector kind's own model reported these; place each at its own node.
            for sub in (err.get("ctx") or {}).get("errors", []):
                yield _one_error(file, root, [*raw_loc, *sub["loc"]], sub["type"], sub["msg"], hint=False)
        else:
            yield _one_error(file, root, raw_loc, err["type"], err["msg"], hint=True)


def _one_error(file: str, root: yaml.Node, raw_loc: list[int | str], kind: str, msg: str, *, hint: bool) -> LintError:
    """Place one error: the key for an unknown key, the mapping for a missing one, else the value."""
    loc = _strip_tags(raw_loc)
    if kind == "extra_forbidden" and loc:
        parent, _ = _walk(root, loc[:-1])
        key_node, _v = _child(parent, loc[-1])
        where = _path(loc[:-1])
        message = f"unknown key {loc[-1]!r}" + (_key_hint(raw_loc, str(loc[-1])) if hint else "")
        return _at(file, key_node or parent, f"{where}: {message}" if where else message)
    if kind == "missing" and loc:
        parent, _ = _walk(root, loc[:-1])
        where = _path(loc[:-1])
        message = f"missing required key {loc[-1]!r}"
        return _at(file, parent, f"{where}: {message}" if where else message)
    node, _ = _walk(root, loc)
    where = _path(loc)
    return _at(file, node, f"{where}: {msg}" if where else msg)


def _key_hint(raw_loc: Sequence[int | str], key: str) -> str:
    """'did you mean' when a known key is close, else the list of keys allowed there."""
    model = _model_at(raw_loc[:-1])
    if model is None:
        return ""
    return key_hint(key, [f.alias or name for name, f in model.model_fields.items()])


def key_hint(key: str, allowed: Sequence[str]) -> str:
    """THE 'did you mean' of every YAML the watcher reads (rule packs, settings): the closest known
    key when one is close, else the list of keys allowed there."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; allowed: {', '.join(allowed)}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _model_at(raw_loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model a pydantic location (tags included) points into, to list its keys."""
    models: list[type[BaseModel]] = [RulePack]
    for seg in raw_loc:
        if isinstance(seg, int):
            continue
        if len(models) > 1:
            tagged = [m for m in models if seg in (getattr(m, "kind", None), getattr(m, "name", None))]
            if len(tagged) == 1:
                models = tagged
                continue
            return None
        fields = {f.alias or name: f for name, f in models[0].model_fields.items()}
        if seg not in fields:
            return None
        models = _models_in(fields[seg].annotation)
        if not models:
            return None
    return models[0] if len(models) == 1 else None


# ----------------------------------------------------------------------------- across files


def _keyed_nodes(root: yaml.Node | None, section: str, key: str) -> list[tuple[str, yaml.Node]]:
    """(value, node) of ``key`` in every item of the list ``section`` (rule ids, series names)."""
    if root is None:
        return []
    _, list_node = _child(root, section)
    if not isinstance(list_node, yaml.SequenceNode):
        return []
    found: list[tuple[str, yaml.Node]] = []
    for item in list_node.value:
        _, value_node = _child(item, key)
        if isinstance(value_node, yaml.ScalarNode) and value_node.value:
            found.append((value_node.value, value_node))
    return found


# What must be unique across all packs loaded together: (list section or None for the root, key,
# message with {value} and {where}).
_UNIQUE: tuple[tuple[str | None, str, str], ...] = (
    (None, "pack", "duplicate pack name {value!r}: also at {where}"),
    ("series", "name", "series {value!r} defined twice: also at {where}"),
    ("rules", "id", "duplicate rule id {value!r}: also defined at {where}"),
)


def _duplicate_errors(parsed: Sequence[_Parsed]) -> list[LintError]:
    """Pack names, series names and rule ids must be unique across all packs loaded together."""
    errors: list[LintError] = []
    first: dict[tuple[str, str], tuple[str, yaml.Node]] = {}
    for p in parsed:
        for section, key, message in _UNIQUE:
            for value, node in _root_key_node(p.root, key) if section is None else _keyed_nodes(p.root, section, key):
                seen = first.setdefault((key, value), (p.file, node))
                if seen[1] is not node:
                    errors.append(_at(p.file, node, message.format(value=value, where=_where(*seen))))
    return errors


def _root_key_node(root: yaml.Node | None, key: str) -> list[tuple[str, yaml.Node]]:
    """(value, node) of a scalar ``key`` at the top of a pack, if it is there and not empty."""
    if root is None:
        return []
    _, node = _child(root, key)
    return [(node.value, node)] if isinstance(node, yaml.ScalarNode) and node.value else []


def _where(file: str, node: yaml.Node) -> str:
    return f"{file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _attach_origins(file: str, root: yaml.Node, pack: RulePack) -> None:
    pack._source = file
    for index, rule in enumerate(pack.rules):
        node, _ = _walk(root, ["rules", index])
        rule.with_origin(Origin(file, node.start_mark.line + 1, node.start_mark.column + 1))
