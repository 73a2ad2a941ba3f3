"""YAML files + dotted overrides → a validated :class:`Config`, with errors that name key and source.

A YAML file may start from another with ``extends: other.yaml`` (path relative to the file); mappings
are merged key by key, everything else is replaced. Overrides look like ``train.lr=3e-4``: the value is
parsed as YAML, so ``3e-4`` is a float, ``[1, 2]`` a list and ``null`` is None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sgdm_dist.config.paths import resolve_paths
from sgdm_dist.config.root import Config, flatten

EXTENDS_KEY = "extends"


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 would read ``no`` (a valid
    ``train.mixed_precision``), ``off`` or ``y`` as booleans."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _mapping_without_duplicates(loader: _Yaml12Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are unique: YAML would keep the last of two equal keys silently."""
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            first = seen[key].line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first at line {first}); the second would replace it",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_Yaml12Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and where it came from."""


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    relative_to: Path | None = None,
    keep_relative: bool = False,
) -> Config:
    """Load ``path`` (or the built-in defaults when None), apply ``overrides``, validate.

    Every local path of the result is absolute: relative ones are taken against ``relative_to``
    (default: the current folder, where the user ran `sgdm`), here and only here, so Ray trials,
    pods and subprocesses that run elsewhere read the same files. ``keep_relative`` leaves them as
    written (for configs rendered for another machine, e.g. a pod's ConfigMap).
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        tree, sources = _read_with_bases(Path(path), chain=())
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        sources[key] = f"override '{item}'"
    cfg = validate(tree, sources)
    if keep_relative:
        return cfg
    resolved = cfg.model_dump()
    resolve_paths(resolved, (relative_to or Path.cwd()).absolute())
    return validate(resolved, sources)


def validate(tree: dict[str, Any], sources: dict[str, str] | None = None) -> Config:
    """Validate a plain dict as a :class:`Config`, translating pydantic errors into ConfigError."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources or {})) from None


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` → ``("train.lr", 0.0003)``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' is not of the form dotted.key=value")
    if "#" in raw:  # YAML would cut the value at a comment: "experiment.name=run #3" means the text
        return key, raw
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from None
    return key, value


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    path = path.expanduser()
    if not path.is_file():
        where = f" (extended from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(
            f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, (*chain, resolved)))}"
        )
    tree = _read_yaml(path)
    base_name = tree.pop(EXTENDS_KEY, None)
    base_tree: dict[str, Any] = {}
    base_sources: dict[str, str] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a file path, got {base_name!r}")
        base_tree, base_sources = _read_with_bases(path.parent / base_name, (*chain, resolved))
    merged = _deep_merge(base_tree, tree)
    sources = dict(base_sources)
    sources.update({key: str(path) for key in flatten(tree)})
    return merged, sources


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the config as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override '{key}': '{'.'.join(parents[: i + 1])}' is a value, not a section"
            )
        node = child
    node[leaf] = value


def _source_of(dotted: str, sources: dict[str, str]) -> str:
    """The most specific source that set this key or one of its parents/children."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in sources:
            return sources[prefix]
    for key, src in sources.items():
        if key.startswith(dotted + "."):
            return src
    return "defaults"


def _describe(exc: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc) or "<root>"
        source = _source_of(dotted, sources)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{source}: unknown key '{dotted}'{hint}")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f", got {got!r}"
            lines.append(f"{source}: '{dotted}': {err['msg']}{got_text}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _allowed_keys(section_loc: list[str]) -> list[str]:
    model: Any = Config
    for part in section_loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []
