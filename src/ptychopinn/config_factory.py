"""One factory for all run configuration: defaults < config file < explicit overrides.

``build_run_config`` is the only place where the run's configs are assembled (ModelConfig,
DataConfig, TrainingConfig, ExecutionConfig, RefineConfig, InferConfig: the sections of
``SECTIONS``); every subcommand (``train``, ``infer``, ``reconstruct``), the Ptychodus settings
and the Python API call it the same way, so a value means the same thing whichever route set it.

Keys are the dataclass field names. Everywhere a key is accepted it may be written
- flat: ``learning_rate`` (every field name is unique across the sections), or
- qualified: ``execution.learning_rate``, or inside a section mapping (``execution: {...}``).
Hyphens are accepted for underscores (``learning-rate``).

Config file (``--config run.yaml``; YAML, so JSON works too)::

    model:
      gridsize: 2
    training:
      max_epochs: 40
      batch_size: 16
    execution:
      scheduler: Adaptive       # alias ReduceLROnPlateau
      plateau_patience: 3
      learning_rate: 5.0e-4     # YAML 1.1 needs the dot; "5e-4" is also accepted
    seed: 3                     # flat keys work too

The header keys written by the audit (``ptychopinn_version``, ``config_file``, ``sources``,
``runtime``) are ignored when a file is read, so ``config.resolved.yaml`` of one run can be the
``--config`` of the next.

Sources recorded per key: ``default``, ``config file``, ``CLI``, ``python`` (keyword overrides of
the Python API) and ``data`` (``model.n``, the pattern size, always comes from the data).
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ptychopinn.config import (
    _SECTION_CLASSES,
    DataConfig,
    ExecutionConfig,
    InferConfig,
    ModelConfig,
    RefineConfig,
    TrainingConfig,
)
from ptychopinn.errors import ConfigError

SECTIONS: dict[str, type] = dict(_SECTION_CLASSES)
#: keys that moved to another section: old qualified spelling -> current key (config files and
#: audits written before the move keep working)
MOVED_KEYS = {"execution.inference_batch_size": "infer.inference_batch_size"}
SOURCE_DEFAULT, SOURCE_FILE, SOURCE_CLI, SOURCE_PYTHON, SOURCE_DATA = (
    "default",
    "config file",
    "CLI",
    "python",
    "data",
)
#: Top-level keys of ``config.resolved.yaml`` that are metadata, skipped when read as a config.
AUDIT_KEYS = ("ptychopinn_version", "config_file", "sources", "runtime")
AUDIT_NAME = "config.resolved.yaml"


# --- keys ---------------------------------------------------------------------------------
def all_keys() -> list[str]:
    """Every qualified key ``section.field`` in section order."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def _flat_index() -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for key in all_keys():
        index.setdefault(key.split(".", 1)[1], []).append(key)
    return index


def flag_name(key: str) -> str:
    """The CLI flag of a key: ``execution.learning_rate`` -> ``--learning-rate``."""
    return "--" + key.split(".", 1)[1].replace("_", "-")


def resolve_key(name: str, where: str = "config") -> str:
    """``learning_rate`` / ``execution.learning_rate`` / ``learning-rate`` ->
    ``execution.learning_rate``."""
    text = str(name).strip().replace("-", "_")
    text = MOVED_KEYS.get(text, text)
    keys = all_keys()
    if "." in text:
        if text in keys:
            return text
    else:
        matches = _flat_index().get(text, [])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"{where}: key {name!r} is ambiguous; write one of {matches}")
    flat = sorted(_flat_index())
    close = difflib.get_close_matches(text.split(".")[-1], flat, n=3)
    hint = f"did you mean {close}?" if close else "see `ptychopinn train --help` for the keys"
    raise ConfigError(
        f"{where}: unknown key {name!r}; expected a field of {list(SECTIONS)} "
        f"(e.g. learning_rate or execution.learning_rate); {hint}"
    )


# --- values ---------------------------------------------------------------------------------
_HINTS: dict[str, Any] = {}


def _hint(key: str):
    if not _HINTS:
        for s, cls in SECTIONS.items():
            for name, hint in typing.get_type_hints(cls).items():
                _HINTS[f"{s}.{name}"] = hint
    return _HINTS[key]


def _describe(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _coerce_one(hint, value):
    if hint is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise TypeError
    if hint is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError
    if hint is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            out = float(value.strip())
            if not math.isfinite(out):
                raise TypeError
            return out
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if isinstance(value, (int,)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return tuple(_coerce_one(int, v) for v in value)
    return value


def coerce_value(key: str, value, label: str | None = None):
    """Convert ``value`` to the type of field ``key`` (strings from YAML/CLI included).

    Raises ValueError ``label: invalid value ...; expected <type>``.
    """
    hint = _hint(key)
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    # None first so that "none" is not taken as a string; str last so "2" is an int for int | str
    order = sorted(options, key=lambda a: (a is not type(None), a is str))
    for option in order:
        if (
            option is str
            and type(None) in options
            and isinstance(value, str)
            and value.strip().lower() in ("none", "null")
        ):
            continue
        try:
            return _coerce_one(option, value)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"{label or key}: invalid value {value!r}; expected {_describe(hint)}")


# --- config file --------------------------------------------------------------------------
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON config file into ``{"section.field": value}`` (values coerced to type)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable YAML config file ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    out: dict[str, Any] = {}

    def put(name: str, value):
        key = resolve_key(name, where=str(path))
        if key in out:
            raise ConfigError(f"{path}: key {key!r} is given twice")
        out[key] = coerce_value(key, value, label=f"{path}: {key}")

    for name, value in data.items():
        if name in AUDIT_KEYS:
            continue
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{path}: section {name!r} must be a mapping of keys, "
                    f"got {type(value).__name__}"
                )
            for sub, v in value.items():
                qualified = str(sub).replace("-", "_")
                if f"{name}.{qualified}" not in all_keys():
                    resolve_key(f"{name}.{sub}", where=str(path))  # raises with a hint
                put(f"{name}.{qualified}", v)
        else:
            put(str(name), value)
    return out


# --- the run configuration ------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """The configs of a run (one per section of SECTIONS) plus where each value came from.

    ``sources`` maps every qualified key (``execution.learning_rate``) to ``default``,
    ``config file``, ``CLI``, ``python`` or ``data``.
    """

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    execution: ExecutionConfig
    refine: RefineConfig = field(default_factory=RefineConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    sources: dict = field(default_factory=dict)
    config_file: Path | None = None

    def section(self, name: str):
        return getattr(self, name)

    def value(self, key: str):
        section, name = key.split(".", 1)
        return getattr(self.section(section), name)

    def items(self):
        """(key, value, source) for every key in section order."""
        for key in all_keys():
            yield key, self.value(key), self.sources.get(key, SOURCE_DEFAULT)

    def non_defaults(self) -> list[tuple[str, Any, str]]:
        """(key, value, source) of the values that differ from the dataclass defaults."""
        defaults = {s: cls() for s, cls in SECTIONS.items()}
        out = []
        for key, value, source in self.items():
            s, name = key.split(".", 1)
            if value != getattr(defaults[s], name):
                out.append((key, value, source))
        return out

    def with_values(self, source: str, **qualified) -> "RunConfig":
        """A copy with ``{"model.n": 32}``-style values replaced
        (``with_values("data", **{...})``)."""
        per_section: dict[str, dict] = {}
        for key, value in qualified.items():
            s, name = key.split(".", 1)
            per_section.setdefault(s, {})[name] = value
        updates = {s: replace(self.section(s), **vals) for s, vals in per_section.items()}
        sources = dict(self.sources)
        sources.update({k: source for k in qualified})
        return replace(self, **updates, sources=sources)

    def as_dict(self) -> dict:
        """``{"model": {...}, "data": {...}, ..., "infer": {...}}`` plain values per section."""
        out: dict[str, dict] = {s: {} for s in SECTIONS}
        for key, value, _ in self.items():
            s, name = key.split(".", 1)
            out[s][name] = list(value) if isinstance(value, tuple) else value
        return out


def _label(key: str, source: str, config_file: Path | None) -> str:
    if source == SOURCE_FILE:
        return f"{config_file}: {key}"
    if source == SOURCE_CLI:
        return flag_name(key)
    return key


def build_run_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    override_source: str = SOURCE_PYTHON,
    command_defaults: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Resolve every section: explicit ``overrides`` > ``config_file`` > ``command_defaults``
    (a subcommand's own defaults, e.g. ``reconstruct``'s 300 refinement epochs; source
    ``default``) > dataclass defaults.

    ``overrides`` maps keys (flat ``learning_rate``, qualified ``execution.learning_rate``, or a
    section name to a mapping) to values; pass only values the caller really set (the CLI passes
    only the flags given on the command line). ``override_source`` labels them in the audit
    (``"CLI"`` from the command line, ``"python"`` otherwise). Every value is validated; a bad
    one raises ValueError naming where it came from (file and key, CLI flag, or key).
    """
    path = Path(config_file) if config_file is not None else None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in (command_defaults or {}).items():
        key = resolve_key(name, where="command default")
        values[key] = coerce_value(key, value, label=key)
    if path is not None:
        for key, value in load_config_file(path).items():
            values[key], sources[key] = value, SOURCE_FILE
    flat_overrides: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                flat_overrides[resolve_key(f"{name}.{sub}", where=override_source)] = v
        else:
            flat_overrides[resolve_key(name, where=override_source)] = value
    for key, value in flat_overrides.items():
        values[key] = coerce_value(key, value, label=_label(key, override_source, path))
        sources[key] = override_source
    built = {}
    for s, cls in SECTIONS.items():
        kwargs = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(s + ".")}
        try:
            built[s] = cls(**kwargs)
        except ValueError as exc:
            raise ConfigError(_locate(str(exc), s, sources, path)) from None
    all_sources = {key: sources.get(key, SOURCE_DEFAULT) for key in all_keys()}
    return RunConfig(**built, sources=all_sources, config_file=path)


def _locate(message: str, section: str, sources: dict, path: Path | None) -> str:
    """Prefix a dataclass validation message ``field: ...`` with where the value came from."""
    name = message.split(":", 1)[0].strip()
    key = f"{section}.{name}"
    if key not in all_keys():
        return f"{section}: {message}"
    rest = message.split(":", 1)[1]
    return f"{_label(key, sources.get(key, SOURCE_DEFAULT), path)}:{rest}"


def run_config_from_objects(
    model: ModelConfig | None = None,
    data: DataConfig | None = None,
    training: TrainingConfig | None = None,
    execution: ExecutionConfig | None = None,
    refine: RefineConfig | None = None,
    infer: InferConfig | None = None,
) -> RunConfig:
    """A RunConfig from ready dataclasses (Python API): values that differ from the defaults are
    recorded with source ``python``, the rest as ``default``. Goes through ``build_run_config``."""
    given = {
        "model": model,
        "data": data,
        "training": training,
        "execution": execution,
        "refine": refine,
        "infer": infer,
    }
    overrides: dict[str, Any] = {}
    for s, obj in given.items():
        if obj is None:
            continue
        if not isinstance(obj, SECTIONS[s]):
            raise TypeError(
                f"{s} config: expected {SECTIONS[s].__name__}, got {type(obj).__name__}"
            )
        default = SECTIONS[s]()
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value != getattr(default, f.name):
                overrides[f"{s}.{f.name}"] = value
    return build_run_config(overrides, override_source=SOURCE_PYTHON)


# --- cross-section checks -------------------------------------------------------------------
def check_run(rc: RunConfig) -> list[str]:
    """Rules that involve more than one section. Raises ValueError for a run that cannot do what
    its settings say; returns warnings (strings) for settings that will have no effect."""
    e, t = rc.execution, rc.training
    warnings = []
    if e.scheduler == "WarmupCosine" and e.warmup_epochs >= t.max_epochs:
        label = _label(
            "execution.warmup_epochs", rc.sources["execution.warmup_epochs"], rc.config_file
        )
        raise ConfigError(
            f"{label}: "
            f"invalid value {e.warmup_epochs}; expected fewer than max_epochs "
            f"({t.max_epochs}) for scheduler WarmupCosine"
        )
    if e.scheduler == "MultiStage":
        late = [m for m in e.lr_milestones if m >= t.max_epochs]
        if late:
            warnings.append(
                f"lr_milestones {late} are at or beyond max_epochs ({t.max_epochs}): "
                "those learning-rate steps never happen in this run"
            )
    for key in (
        "lr_gamma",
        "plateau_factor",
        "plateau_patience",
        "min_lr",
        "warmup_epochs",
        "lr_milestones",
    ):
        users = {
            "lr_gamma": ("Exponential", "MultiStage"),
            "lr_milestones": ("MultiStage",),
            "plateau_factor": ("Adaptive",),
            "plateau_patience": ("Adaptive",),
            "min_lr": ("Adaptive", "WarmupCosine"),
            "warmup_epochs": ("WarmupCosine",),
        }[key]
        if (
            rc.sources.get(f"execution.{key}") not in (None, SOURCE_DEFAULT)
            and e.scheduler not in users
        ):
            warnings.append(
                f"{key} is set but scheduler {e.scheduler} does not use it "
                f"(used by {', '.join(users)})"
            )
    if rc.sources.get("execution.momentum") not in (None, SOURCE_DEFAULT) and e.optimizer != "sgd":
        warnings.append(f"momentum is set but optimizer {e.optimizer} does not use it (sgd only)")
    if e.early_stopping is False and rc.sources.get("execution.early_stop_patience") not in (
        None,
        SOURCE_DEFAULT,
    ):
        warnings.append("early_stop_patience is set but early stopping is disabled")
    return warnings


# --- audit -----------------------------------------------------------------------------------
def _yaml_scalar(value) -> str:
    import yaml

    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    if text.endswith("..."):
        text = text[:-3].strip()
    return text


def audit_text(
    rc: RunConfig, runtime: Mapping[str, Any] | None = None, command: str | None = None
) -> str:
    """The text of ``config.resolved.yaml`` (see ``write_audit``); ``command`` names the
    subcommand in the header."""
    import yaml

    from ptychopinn import __version__

    lines = [
        f"# ptychopinn {__version__}: resolved configuration of a run"
        + (f" ({command})." if command else "."),
        "# Every key with its value and, after '#', its source (default / config file / CLI /",
        "# python / data). Precedence: CLI flag (or Python argument) > config file > default.",
        "# 'sources' repeats the sources for programs; 'runtime' holds values resolved at run "
        "time.",
        "# This file is a valid --config: its header keys are ignored when read back.",
        f"ptychopinn_version: {_yaml_scalar(__version__)}",
        f"config_file: {_yaml_scalar(str(rc.config_file.resolve()) if rc.config_file else None)}",
    ]
    width = max(len(k.split(".", 1)[1]) for k in all_keys()) + 2
    for s in SECTIONS:
        lines.append(f"{s}:")
        for key, value, source in rc.items():
            if key.startswith(s + "."):
                name = key.split(".", 1)[1]
                entry = f"  {name}: {_yaml_scalar(value)}"
                lines.append(f"{entry:<{width + 14}} # {source}")
    lines.append("sources:")
    for key, _, source in rc.items():
        lines.append(f"  {key}: {_yaml_scalar(source)}")
    runtime = dict(runtime or {})
    lines.append("runtime:" + ("" if runtime else " {}"))
    if runtime:
        body = yaml.safe_dump(
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in runtime.items()},
            sort_keys=False,
            default_flow_style=False,
            width=10_000,
        )
        lines += ["  " + line for line in body.strip().splitlines()]
    return "\n".join(lines) + "\n"


def write_audit(
    rc: RunConfig,
    output_dir: str | Path,
    runtime: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write ``output_dir/config.resolved.yaml`` atomically (replacing an earlier run's file:
    the audit describes the latest run started in this directory)."""
    from ptychopinn.io.atomic import atomic_path

    path = Path(output_dir) / AUDIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(audit_text(rc, runtime, command))
    return path


def read_audit(path: str | Path) -> dict:
    """Parse a ``config.resolved.yaml`` into a dict (sections, ``sources``, ``runtime``)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())
