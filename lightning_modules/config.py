"""OmegaConf configs: merge YAML files, apply ``key=value`` overrides strictly, resolve bare config names.

A config file may list other files to merge first under ``includes:`` (paths relative to ``configs/`` or to the
file). Overrides are checked against the merged config: an unknown key or a value of the wrong type is a
:class:`ConfigError` that names the key and what was expected.

New keys (``+section.key=value``): a task's keys are fixed except in its *open sections*
(:data:`lightning_modules.tasks.OPEN_SECTIONS`: the sections that take a consumer's keyword arguments, such as
``trainer.`` = lightning.Trainer's), where ``+`` adds a key the config files do not list; the section's consumer
checks it when the run is built, before a run folder exists. ``+`` anywhere else is refused naming the sections
that take new keys; a config without a known ``task`` accepts ``+`` anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


#: Keys whose values legitimately change type (Lightning's "int, fraction or 'auto'" arguments): an override keeps
#: the YAML-parsed value and the consumer (lightning.Trainer) checks it, instead of coercing it to the file's type.
FREE_TYPED_KEYS = frozenset({
    "trainer.devices", "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.limit_train_batches",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.gradient_clip_val", "trainer.max_time",
    "trainer.fast_dev_run",
})


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file or key."""


def resolve_config_path(name: str | Path) -> Path:
    """Find a config by path, or by bare name in ``configs/`` (``stage2.yaml`` or ``stage2``)."""
    candidates = [Path(name)]
    for base in (CONFIG_DIR,):
        candidates += [base / str(name), base / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
    raise ConfigError(f"config '{name}' not found (looked in the working directory and {CONFIG_DIR}); available: {available}")


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse config file {path}: {error}") from error
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
    includes = loaded.pop("includes", None) or []
    merged = OmegaConf.create({})
    for include in includes:
        include_path = (path.parent / include) if (path.parent / include).is_file() else resolve_config_path(include)
        merged = OmegaConf.merge(merged, _load_file(include_path.resolve(), seen + (path,)))
    return OmegaConf.merge(merged, loaded)  # type: ignore[return-value]


def _check_override_type(item: str, key: str, old: Any, new: Any) -> Any:
    """Return ``new`` converted to the type of ``old``, or raise naming the override ``item`` as typed and the key."""
    if old is None or new is None:
        return new

    def refuse(expected: str) -> ConfigError:
        return ConfigError(f"override '{item}': {key}={new!r} is {_a_type(new)}; expected {expected}")

    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        raise refuse("a boolean (true/false)")
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        raise refuse("an integer")
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        if isinstance(new, str):  # YAML 1.1 reads "5e-3" (no dot) as a string
            try:
                return float(new)
            except ValueError:
                pass
        raise refuse("a number")
    if isinstance(old, str):
        if isinstance(new, (dict, list)):
            raise refuse("a string")
        # a YAML boolean stays one: keys such as parallel_variants take "auto" or true / false ("False" is no switch)
        return new if isinstance(new, bool) else str(new)
    if isinstance(old, (list, ListConfig)) and not isinstance(new, list):
        raise refuse("a list like [1, 2]")
    if isinstance(old, (dict, DictConfig)) and not isinstance(new, dict):
        raise refuse("a mapping like {a: 1}")
    return new


def _a_type(value: Any) -> str:
    """'a string', 'an integer', ... : the YAML type an override's value was read as."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}")


def open_sections_of(cfg: DictConfig) -> dict[str, str] | None:
    """The open sections (dotted prefix -> what they accept) of ``cfg``'s task, or None when the config names no
    known task (then ``+`` may add a key anywhere)."""
    task = cfg.get("task") if isinstance(cfg, DictConfig) else None
    if task is None:
        return None
    from lightning_modules.tasks import OPEN_SECTIONS  # here: tasks imports this module

    return OPEN_SECTIONS.get(str(task))


def _open_section(key: str, sections: Mapping[str, str]) -> str | None:
    """The (innermost) open section that ``key`` lies strictly below, or None."""
    hits = [s for s in sections if key.startswith(s + ".")]
    return max(hits, key=len) if hits else None


def _describe_open(sections: Mapping[str, str]) -> str:
    return ", ".join(f"{s}. ({what})" for s, what in sections.items()) if sections else "nowhere"


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], *, unknown_key_note: str | None = None) -> DictConfig:
    """Apply ``a.b=value`` overrides (YAML-parsed values) to existing keys; ``+a.b=value`` adds a new key on purpose,
    in the open sections of the config's task (:func:`open_sections_of`; anywhere when it names no known task).
    ``unknown_key_note``: what a caller that takes no new keys says after an unknown key's list and "did you mean",
    instead of the advice on '+'."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        allow_new = key.startswith("+")
        key = key.lstrip("+")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': '{key}' is not a dotted key like trainer.max_epochs")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override '{item}': cannot parse value: {error}") from error
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        exists = isinstance(parent, DictConfig) and leaf in parent
        if not exists:
            _check_new_key(cfg, item, key, allow_new, unknown_key_note)
        old = parent[leaf] if exists else None
        if key not in FREE_TYPED_KEYS:
            value = _check_override_type(item, key, OmegaConf.to_container(old) if isinstance(old, (DictConfig, ListConfig)) else old, value)
        with _unlocked(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _check_new_key(cfg: DictConfig, item: str, key: str, allow_new: bool, note: str | None = None) -> None:
    """Raise unless ``key`` (absent from ``cfg``) may be added: ``allow_new`` ('+') in an open section, below
    mappings (or absent / null sections) only. The message lists the keys of the deepest section that exists, the
    closest one, and says where '+' works -- never advising it where it would not."""
    parts = key.split(".")
    node: Any = cfg
    depth = 0  # parts[:depth] is the deepest existing section
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            break
        if not isinstance(child, DictConfig):
            where = ".".join(parts[:depth + 1])
            raise ConfigError(f"override '{item}': '{where}' is a value ({child!r}), not a section with keys; "
                              f"set it with '{where}=...'")
        node = child
    else:
        depth = len(parts) - 1
    sections = open_sections_of(cfg)
    section = None if sections is None else _open_section(key, sections)
    if allow_new and (sections is None or section is not None):
        return  # the section's consumer checks the key when the run is built
    missing = parts[depth]  # the first part of the key that does not exist
    options = sorted(str(o) for o in node.keys())
    where = f"'{'.'.join(parts[:depth])}'" if depth else "the top level"
    hint = _closest(missing, options)
    did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
    if sections is None:
        advice = f" Prefix with '+' ('+{key}=...') to add a new key on purpose."
    elif section is not None:  # an open section: '+' adds the key when the section's consumer takes it
        from lightning_modules.tasks import open_section_takes

        takes = open_section_takes(str(cfg.get("task")), section, key)
        if takes:
            advice = (f" '{key}' is not in the config files but '{section}' takes it ({sections[section]}): write "
                      f"'+{key}=...' to add it on purpose.")
        elif takes is None:
            advice = (f" '{section}' takes new keys ({sections[section]}, checked before a run folder is made): if "
                      f"'{key}' is one, '+{key}=...' adds it.")
        else:
            advice = (f" '{section}' takes new keys, but only {sections[section]}: '{key}' is not one, so '+' "
                      f"would not add it either.")
    else:
        advice = f" New keys ('+key=value') are taken only under {_describe_open(sections)}."
    if allow_new:
        raise ConfigError(f"override '{item}': cannot add '{key}': {where} has the fixed keys {options}"
                          f"{did_you_mean}.{advice}")
    if note is not None:
        raise ConfigError(f"override '{item}': unknown key '{key}'. Keys at {where}: {options}{did_you_mean}; {note}")
    raise ConfigError(f"override '{item}': unknown key '{key}'. Keys at {where}: {options}{did_you_mean}.{advice}")


class _unlocked:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def _closest(word: str, options: Sequence[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return matches[0] if matches else None


def load_config(configs: Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge config files in order, then apply overrides; the result is in struct mode (unknown keys raise)."""
    if not configs:
        raise ConfigError("at least one --config file is required, e.g. --config configs/stage2.yaml")
    cfg = OmegaConf.create({})
    for name in configs:
        cfg = OmegaConf.merge(cfg, _load_file(resolve_config_path(name)))
    OmegaConf.set_struct(cfg, True)
    apply_overrides(cfg, overrides)
    return cfg  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------ value checks (ConfigError naming the key)
def check_number(value: Any, key: str, minimum: float, *, integer: bool = False, exclusive: bool = False,
                 maximum: float | None = None, expected: str | None = None) -> float:
    """``value`` of config key ``key`` as a number >= ``minimum`` (> with ``exclusive``; an int with ``integer``;
    <= ``maximum`` when given), else a ConfigError naming the key and what is expected (``expected``, e.g. "a
    probability in [0, 1]", or "a number >= <minimum>")."""
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > minimum if exclusive else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        if expected is None:
            expected = f"{'an integer' if integer else 'a number'} {'>' if exclusive else '>='} {minimum:g}"
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    return value


def check_focus_option(value: Any, name: str = "data.synthetic.focus_m") -> float | None:
    """A focus-policy setting: None (each scene's nearest subject) or a fixed focus distance in metres (finite, > 0).

    Raises ConfigError naming ``name`` otherwise (0, negative, NaN, infinite, not a number).
    """
    if value is None:
        return None
    expected = (f"{name} must be null (each scene's nearest subject) or a fixed focus distance in metres, finite "
                f"and > 0 (e.g. 100.0: effectively infinity for 0.5-10 m scenes)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{expected}; got {value!r} ({type(value).__name__})")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ConfigError(f"{expected}; got {value!r}")
    return float(value)


def keyword_names(fn: Any, exclude: Iterable[str] = ()) -> list[str]:
    """The names ``fn`` takes as keyword arguments (``self`` and ``exclude`` left out), in signature order."""
    import inspect

    excluded = set(exclude) | {"self"}
    return [n for n, p in inspect.signature(fn).parameters.items()
            if n not in excluded and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_keyword_options(options: Any, fn: Any, key: str, exclude: Iterable[str] = (),
                          extra: Iterable[str] = ()) -> dict[str, Any]:
    """``options`` (config ``key``, a mapping or null) as keyword arguments of ``fn``: a ConfigError naming
    ``<key>.<name>`` and the names ``fn`` takes (less ``exclude``, the ones the caller passes itself; plus ``extra``,
    names the caller takes itself) for any other name, so that a misspelt option fails when the run is built rather than at the first render."""
    if options is None:
        return {}
    if not isinstance(options, (dict, DictConfig)):
        raise ConfigError(f"{key}={options!r}: expected a mapping of keyword arguments like {{name: value}}")
    allowed = sorted(set(keyword_names(fn, exclude)) | set(extra))
    for name in options:
        if name not in allowed:
            hint = _closest(str(name), allowed)
            raise ConfigError(f"config key '{key}.{name}' is unknown: {key} takes the keyword arguments of "
                              f"{fn.__module__}.{fn.__qualname__}: {allowed}" + (f" (did you mean '{hint}'?)" if hint else ""))
    return dict(options)
