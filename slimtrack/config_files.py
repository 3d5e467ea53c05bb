"""Config files: YAML or TOML, with the sections of Config (model, data, train, tracking,
runtime) and an optional top-level ``preset``.

``read_config_file`` reads one (``--config``), each value checked against its field's type;
``build_config_with_file`` layers the preset, the file and the flags given; and
``config_to_yaml`` writes one (``--print-config``, a run's ``config.yaml``), which reads
back to an equal Config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtrack.config import (PRESETS, SECTION_TYPES, SECTIONS, Config, FieldInfo, build_config, config_fields,
                              locate_field)
from slimtrack.errors import UserError

CONFIG_FILE_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}
CONFIG_FILE_HEADER = ("slimtrack config: the preset, then these values, then the flags given "
                      "(`slimtrack train --config FILE`)")


def build_config_with_file(preset: str | None, config_file: str | None, **overrides: Any) -> Config:
    """A validated Config: the preset, then the config file's values, then ``overrides`` (the
    flags given; None = not given). ``preset`` None: the file's preset, else small."""
    file_preset, file_values = read_config_file(config_file) if config_file else (None, {})
    given = {".".join(locate_field(key)): value for key, value in overrides.items() if value is not None}
    return build_config(preset or file_preset or "small", **{**file_values, **given})


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """A config file's preset (None when it names none) and its values as ``section.field``
    overrides, each checked against its field's type. A missing, unreadable or unparsable
    file, an unknown section or key, or a value of the wrong type is a one-line UserError
    that names the file. A key without a value (YAML ``null``) keeps the preset's value."""
    path = Path(path)
    data = _parse_config_file(path)
    preset = data.pop("preset", None)
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise UserError(f"config file {path}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {(info.section, info.name): info for info in config_fields()}
    values: dict[str, Any] = {}
    for section, entries in data.items():
        if section not in SECTION_TYPES:
            raise UserError(f"config file {path}: unknown section {section!r} "
                            f"(expected preset, {', '.join(SECTIONS)})")
        if entries is None:  # an empty YAML section
            continue
        if not isinstance(entries, dict):
            raise UserError(f"config file {path}: section {section!r} must hold key: value pairs")
        for name, value in entries.items():
            info = fields.get((section, name))
            if info is None:
                raise UserError(f"config file {path}: unknown key {section}.{name}")
            if not info.cli:
                raise UserError(f"config file {path}: {info.key} is not a setting: {info.help}")
            if value is not None:
                values[info.key] = _file_value(info, value, path)
    return preset, values


def _parse_config_file(path: Path) -> dict[str, Any]:
    """The file's top-level table (YAML by PyYAML, TOML by tomllib)."""
    kind = CONFIG_FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"config file {path}: expected a .yaml, .yml or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot read config file {path}: {reason}") from None
    try:
        data = _parse_toml(text) if kind == "TOML" else _parse_yaml(text)
    except ValueError as exc:
        raise UserError(f"config file {path} is not valid {kind}: {exc}") from None
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected sections ({', '.join(SECTIONS)}), got a {type(data).__name__}")
    return data


def _parse_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        if mark is not None and problem:
            raise ValueError(f"{problem} at line {mark.line + 1}, column {mark.column + 1}") from None
        raise ValueError(" ".join(str(exc).split())) from None


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        raise UserError("TOML config files need Python 3.11 or newer (tomllib); use YAML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def _file_value(info: FieldInfo, value: Any, path: Path) -> Any:
    """``value`` as the field's type. A float also accepts a whole number and a numeric string
    (PyYAML reads ``6e-4``, without a dot, as a string); an int, a whole-number string."""
    kind = info.type
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    elif not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            if kind is float:
                return float(value)
            if not isinstance(value, float):  # 1000.0 is not a step count
                return int(value)
        except ValueError:
            pass
    expected = {bool: "true or false", str: "text", int: "a whole number", float: "a number"}[kind]
    raise UserError(f"config file {path}: {info.key} must be {expected}, got {value!r}")


def config_to_yaml(config: Config) -> str:
    """``config`` as a YAML config file: the preset and every setting, each with its help as a
    comment. ``read_config_file`` reads it back to an equal Config. ``model.vocab_size`` is
    left out: the tokenizer sets it when the run starts."""
    lines = [f"# {CONFIG_FILE_HEADER}", f"preset: {_yaml_scalar(config.preset)}"]
    section = ""
    for info in config_fields():
        if info.section != section:
            section = info.section
            lines.append(f"{section}:")
        if info.cli:
            value = getattr(getattr(config, info.section), info.name)
            lines.append(f"  {info.name}: {_yaml_scalar(value)}  # {info.help}")
        else:
            lines.append(f"  # {info.name}: {info.help}; not a setting")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    """One value in YAML's plain or quoted form, as PyYAML writes it (``''`` for empty text)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000)
    return text.removesuffix("\n...\n").removesuffix("\n")
