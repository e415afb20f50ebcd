"""params.yaml on disk: read it into the typed `Params` (config.py) with `-S key=value` overrides,
explain what pydantic rejected in one line, and write changed values back keeping the comments.

Unknown keys, wrong types and out-of-range values fail at load, naming the dotted key:
`params.yaml: tokenizer.bert.vocab_size: must be >= 100, got 5`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmforge.components.config import Params
from lmforge.components.errors import LmforgeError

DEFAULT_PARAMS = "params.yaml"


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read params.yaml, apply `section.key=value` overrides, and validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: cannot read params file ({e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LmforgeError(f"{path}:{where}: YAML syntax error: {problem}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    # YAML anchors (`train: *train`) share one dict; an override of one section must not change another.
    raw = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        apply_override(raw, item)
    return validate_params(raw, origin=str(path))


def validate_params(raw: dict[str, Any], origin: str = DEFAULT_PARAMS) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise LmforgeError(f"{origin}: {format_validation_error(e)}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is read as YAML (`3`, `true`, `[a, b]`, `null`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise LmforgeError(f"override {item!r}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        dotted = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = _list_item(node, part, dotted)
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise LmforgeError(f"override {item!r}: {dotted} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        index = _list_index(node, last, key)
        node[index] = parsed
    else:
        node[last] = parsed


def _list_index(node: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise LmforgeError(f"override: {dotted}: expected an index below {len(node)}, got {part!r}")
    return int(part)


def _list_item(node: list, part: str, dotted: str) -> Any:
    return node[_list_index(node, part, dotted)]


def format_validation_error(error: ValidationError) -> str:
    """pydantic's errors as `dotted.key: what was expected, got value` lines joined by '; '."""
    messages = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        messages.append(f"{loc}: {_explain(err)}" if loc else _explain(err))
    return "; ".join(messages)


def _explain(err: dict[str, Any]) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}, got {got!r}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}, got {got!r}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}, got {got!r}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}, got {got!r}"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {got!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {got!r}"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {got!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {got!r}"
    if kind in ("string_type",):
        return f"expected a string, got {got!r}"
    if kind == "string_pattern_mismatch":
        return f"expected a name matching {ctx['pattern']}, got {got!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {got!r}"
    if kind == "list_type":
        return f"expected a list, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}, got {got!r}"


def write_params(params: Params, path: str | Path = DEFAULT_PARAMS, base: Params | None = None) -> list[str]:
    """Make the params file say `params`, changing only the keys that differ; return those keys.

    Flows take params from the Prefect form or from -S overrides, but DVC decides what is up to
    date from params.yaml, so the file must hold what ran (as `dvc exp run -S` writes it).
    DVC's modify_yaml round-trips the file, keeping its comments.

    With `base` (the params a flow started from), only what the flow changed relative to it is
    written, so flows running at once each add their own fine-tuning runs instead of writing back
    the file as they first read it. The read-modify-write holds a lock on the file, and the file is
    replaced whole: modify_yaml rewrites in place, where a flow planning from dvc.yaml at that moment
    (DVC reads params.yaml) would find half a file.
    """
    import shutil
    import tempfile

    from dvc.utils.serialize import modify_yaml

    from lmforge.components.atomic import write_text

    path = Path(path)
    with params_file_lock(path):
        current = load_params(path).model_dump(mode="json") if path.exists() else {}
        wanted = params.model_dump(mode="json")
        if base is not None:
            mine = _differences(base.model_dump(mode="json"), wanted)
            changed = [key for key in mine if key in _differences(current, wanted)]
        else:
            changed = _differences(current, wanted)
        if changed or not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                draft = Path(tmp) / path.name
                if path.exists():
                    shutil.copyfile(path, draft)
                with modify_yaml(draft) as data:
                    for dotted in changed or list(wanted):
                        try:
                            _set_dotted(data, dotted, _get_dotted(wanted, dotted))
                        except KeyError:  # gone from `params` (a fine-tuning run removed): gone from the file
                            _delete_dotted(data, dotted)
                write_text(path, draft.read_text(encoding="utf-8"))
    return changed


def params_file_lock(path: Path):
    """An exclusive lock for rewriting the params file, shared by every lmforge process on this host."""
    from lmforge.components.atomic import host_lock

    return host_lock("params", str(path.resolve()))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _get_dotted(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _delete_dotted(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
    if isinstance(tree, dict):
        tree.pop(last, None)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[last] = value
