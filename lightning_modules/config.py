"""OmegaConf configs: merge YAML files, apply ``key=value`` overrides strictly, resolve bare config names.

A config file may list other files to merge first under ``includes:`` (paths relative to ``configs/`` or to the
file). Overrides are checked against the merged config: an unknown key or a value of the wrong type is a
:class:`ConfigError` that names the key and what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

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


def _check_override_type(key: str, old: Any, new: Any) -> Any:
    """Return ``new`` converted to the type of ``old``, or raise naming the key."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        raise ConfigError(f"override '{key}={new!r}': expected a boolean (true/false), got {type(new).__name__}")
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        raise ConfigError(f"override '{key}={new!r}': expected an integer, got {type(new).__name__}")
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        if isinstance(new, str):  # YAML 1.1 reads "5e-3" (no dot) as a string
            try:
                return float(new)
            except ValueError:
                pass
        raise ConfigError(f"override '{key}={new!r}': expected a number, got {type(new).__name__}")
    if isinstance(old, str):
        if isinstance(new, (dict, list)):
            raise ConfigError(f"override '{key}={new!r}': expected a string, got {type(new).__name__}")
        # a YAML boolean stays one: keys such as parallel_variants take "auto" or true / false ("False" is no switch)
        return new if isinstance(new, bool) else str(new)
    if isinstance(old, (list, ListConfig)) and not isinstance(new, list):
        raise ConfigError(f"override '{key}={new!r}': expected a list like [1, 2], got {type(new).__name__}")
    if isinstance(old, (dict, DictConfig)) and not isinstance(new, dict):
        raise ConfigError(f"override '{key}={new!r}': expected a mapping like {{a: 1}}, got {type(new).__name__}")
    return new


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``a.b=value`` overrides (YAML-parsed values). ``+a.b=value`` adds a new key on purpose."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        allow_new = key.startswith("+")
        key = key.lstrip("+")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override '{item}': cannot parse value: {error}") from error
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or (leaf not in parent and not allow_new):
            options = sorted(parent.keys()) if isinstance(parent, DictConfig) else []
            where = f"'{parent_key}'" if parent_key else "the top level"
            hint = _closest(leaf, [str(o) for o in options])
            raise ConfigError(
                f"override '{item}': unknown key '{key}'. Keys at {where}: {options}"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + ". Prefix with '+' to add a new key on purpose."
            )
        old = parent[leaf] if leaf in parent else None
        if key not in FREE_TYPED_KEYS:
            value = _check_override_type(key, OmegaConf.to_container(old) if isinstance(old, (DictConfig, ListConfig)) else old, value)
        with _unlocked(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


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
