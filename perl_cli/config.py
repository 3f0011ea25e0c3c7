"""experiments.toml → validated, expanded experiment specs, each with a fingerprint.

The file has a shared `[base]` (like the seed's YAML `base:`), then one table per suite:

    [suites."core-1.5b"]
    name = "{method}_r{rank}_s{seed}"          # how experiments are named
    [suites."core-1.5b".base.training]          # the suite's own settings over [base]
    per_device_train_batch_size = 4
    [suites."core-1.5b".matrix]                 # every combination is one experiment
    method = ["lora", "dora", "vera"]
    seed = [42, 123, 456]
    [[suites."core-1.5b".when]]                 # conditional overrides
    if = { method = "vera" }
    set = { "training.learning_rate" = 1e-4 }
    [[suites."core-1.5b".experiments]]          # explicit extra experiments
    name = "custom_lora_r32_s42"
    peft = { type = "lora", r = 32, lora_alpha = 64 }

Settings resolve in this order: schema defaults ← [base] ← suite base ← matrix values
(or an extra experiment's own settings) ← matching `when` rules ← `--set` overrides.
Then a method's own defaults (methods.METHOD_DEFAULTS, e.g. dropout 0 for PiSSA and
MiLoRA) replace what the experiment did not set for itself: shared settings and `when`
rules not conditioned on the method do not count (docs/fairness.md).
Everything that is wrong is reported as a ConfigError naming the file, the key or line,
and the fix.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perl_cli import architectures, names, schema

DEFAULT_NAME_TEMPLATE = "{method}_r{rank}_s{seed}"
PACKAGED_CONFIG = Path(__file__).with_name("experiments.toml")
SUITE_KEYS = {"description", "name", "base", "matrix", "when", "experiments", "run", "slurm"}
# `[suites.X.run]`: the suite's defaults for `perl run` flags (the command line wins),
# e.g. the demo runs two single-threaded CPU jobs at a time. name -> smallest value.
RUN_DEFAULT_KEYS = {"jobs": 1, "jobs_per_gpu": 1, "retries": 0, "stall_timeout": 15}
TOP_KEYS = {"base", "suites", "slurm", "benchmarks"}  # [benchmarks.NAME]: perl_cli/benchmarks.py
# `[slurm]` (every suite) and `[suites.X.slurm]` (one suite): defaults for `perl run --backend
# slurm` options (the command line wins). key -> (type, smallest value for whole numbers).
SLURM_DEFAULT_KEYS: dict[str, tuple[type, int]] = {
    "partition": (str, 0), "account": (str, 0), "time": (str, 0), "mem": (str, 0),
    "gpus_per_job": (int, 0), "cpus_per_job": (int, 1), "array_parallelism": (int, 1), "args": (dict, 0),
}
# Keys of the resolved config that are identity, not settings: kept out of the fingerprint.
IDENTITY_KEYS = ("name", "suite", "fingerprint", "benchmark_specs")


class ConfigError(Exception):
    """A problem in the user's config or command line; the message says how to fix it."""


@dataclass
class Experiment:
    """One fully resolved experiment: what a worker needs, and nothing else."""

    name: str
    suite: str
    config: dict[str, Any]
    fingerprint: str

    @property
    def method(self) -> str:
        return self.config["peft"]["type"]

    @property
    def rank(self) -> int:
        return self.config["peft"]["r"]

    @property
    def alpha(self) -> float:
        return self.config["peft"]["lora_alpha"]

    @property
    def seed(self) -> int:
        return self.config["common"]["seed"]

    @property
    def data_size(self) -> int | None:
        return self.config["dataset"]["data_size"]

    @property
    def learning_rate(self) -> float:
        return self.config["training"]["learning_rate"]

    @property
    def max_steps(self) -> int:
        return self.config["training"]["max_steps"]

    @property
    def model(self) -> str:
        return self.config["model"]["model_name_or_path"]

    def resolved(self) -> dict[str, Any]:
        """The content of config.json: identity, fingerprint and every setting."""
        return {"name": self.name, "suite": self.suite, "fingerprint": self.fingerprint, **self.config}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "rank": self.rank,
            "alpha": self.alpha,
            "seed": self.seed,
            "data_size": self.data_size,
            "learning_rate": self.learning_rate,
            "max_steps": self.max_steps,
            "model": self.model,
            "fingerprint": self.fingerprint,
        }


@dataclass
class ConfigFile:
    path: Path
    text: str
    data: dict[str, Any]
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def suite_names(self) -> list[str]:
        return list(self.suites)

    def run_defaults(self, suite: str) -> dict[str, int]:
        """The suite's `[suites.X.run]` defaults for `perl run` flags, validated."""
        table = self.suites.get(suite, {}).get("run", {})
        where = f"suites.{suite}.run"
        if not isinstance(table, dict):
            raise ConfigError(f"{self.path}: {where} must be a table, e.g. jobs = 2.")
        _check_keys(self, table, set(RUN_DEFAULT_KEYS), where)
        for key, value in table.items():
            low = RUN_DEFAULT_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{self.path}{_line(self, key)}: {where}.{key} = {value!r} must be a whole number >= {low}.")
        return dict(table)

    def slurm_defaults(self, suite: str) -> dict[str, Any]:
        """`[slurm]` overlaid with `[suites.X.slurm]`, type-checked (values are checked by the backend)."""
        merged: dict[str, Any] = {}
        for where, table in (("slurm", self.data.get("slurm", {})), (f"suites.{suite}.slurm", self.suites.get(suite, {}).get("slurm", {}))):
            if not isinstance(table, dict):
                raise ConfigError(f"{self.path}: {where} must be a table, e.g. partition = \"gpu\".")
            _check_keys(self, table, set(SLURM_DEFAULT_KEYS), where)
            for key, value in table.items():
                kind, low = SLURM_DEFAULT_KEYS[key]
                ok = isinstance(value, kind) and not isinstance(value, bool)
                if ok and kind is int:
                    ok = value >= low
                if ok and kind is dict:
                    ok = all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value.values())
                if not ok:
                    want = {str: "a string", int: f"a whole number >= {low}", dict: "a table of sbatch options, e.g. { qos = \"high\" }"}[kind]
                    raise ConfigError(f"{self.path}{_line(self, key)}: {where}.{key} = {value!r} must be {want}.")
            merged.update(table)
        return merged


# --- loading --------------------------------------------------------------------


def default_config_path() -> Path:
    """./experiments.toml when there is one, else the copy shipped with PeRL."""
    local = Path("experiments.toml")
    return local if local.exists() else PACKAGED_CONFIG


def load(path: Path | str | None = None) -> ConfigFile:
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file. Pass --config FILE, or run from a directory "
            "that has an experiments.toml."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc}).") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}. Fix the file at that line.") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables are nested too deeply to read. Fix the file.") from None
    cfg = ConfigFile(path=path, text=text, data=data)
    _check_keys(cfg, data, TOP_KEYS, "top level")
    suites = data.get("suites", {})
    if not isinstance(suites, dict) or not suites:
        raise ConfigError(f"{path}: no suites defined. Add a [suites.<name>] table.")
    for name, suite in suites.items():
        problem = names.name_problem(name)
        if problem:
            raise ConfigError(
                f"{path}{_line(cfg, name)}: suite name {name!r} is not allowed ({problem}): it becomes the "
                f"directory <output>/<suite>/, so {names.RULE}. Rename the [suites.\"...\"] table."
            )
        if not isinstance(suite, dict):
            raise ConfigError(f"{path}: suites.{name} must be a table.")
        _check_keys(cfg, suite, SUITE_KEYS, f"suites.{name}")
        description = suite.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{path}{_line(cfg, 'description')}: suites.{name}.description must be a string, e.g. description = \"rank sweep\".")
    cfg.suites = suites
    _check_benchmarks(cfg)
    base = data.get("base", {})
    _check_settings(cfg, base, "base")
    return cfg


# --- expansion ------------------------------------------------------------------


def expand(
    cfg: ConfigFile,
    suite: str,
    *,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
    sets: Iterable[str] = (),
) -> list[Experiment]:
    """The suite's experiments, filtered by --only/--exclude and overridden by --set."""
    if suite not in cfg.suites:
        raise ConfigError(
            f"{cfg.path}: unknown suite '{suite}'{_did_you_mean(suite, cfg.suites)}. "
            f"Valid suites: {', '.join(cfg.suites)}."
        )
    raw = cfg.suites[suite]
    where = f"suites.{suite}"
    suite_base = raw.get("base", {})
    _check_settings(cfg, suite_base, f"{where}.base")
    base = _merge(schema.defaults(), _as_paths(cfg, cfg.data.get("base", {}), "base"))
    base = _merge(base, _as_paths(cfg, suite_base, f"{where}.base"))
    rules = _parse_when(cfg, raw.get("when", []), where)
    template = raw.get("name", DEFAULT_NAME_TEMPLATE)
    if not isinstance(template, str):
        raise ConfigError(f"{cfg.path}: {where}.name must be a string template like '{DEFAULT_NAME_TEMPLATE}'.")

    # (name, config before --set, the paths the experiment sets explicitly)
    candidates: list[tuple[str, dict, set[str]]] = []
    for values in _matrix_points(cfg, raw.get("matrix", {}), where):
        config, by_when = _apply_when(_merge(base, values), rules)
        candidates.append((_render_name(cfg, template, config, where), config, _paths(values) | by_when))
    extras = raw.get("experiments", [])
    if not isinstance(extras, list):
        raise ConfigError(
            f"{cfg.path}{_line(cfg, 'experiments')}: {where}.experiments must be an array of tables "
            f"([[{where}.experiments]] with a name and its settings), not {type(extras).__name__}."
        )
    for i, extra in enumerate(extras):
        ewhere = f"{where}.experiments[{i}]"
        if not isinstance(extra, dict):
            raise ConfigError(f"{cfg.path}: {ewhere} must be a table.")
        extra = dict(extra)
        name = extra.pop("name", None)
        _check_settings(cfg, extra, ewhere)
        own = _as_paths(cfg, extra, ewhere)
        config, by_when = _apply_when(_merge(base, own), rules)
        config = _merge(config, own)
        if name is None:
            name = _render_name(cfg, template, config, ewhere)
        candidates.append((name, config, _paths(own) | by_when))
    if not candidates:
        raise ConfigError(f"{cfg.path}: suite '{suite}' has no experiments. Give it a [{where}.matrix] or [[{where}.experiments]].")

    seen: set[str] = set()
    for name, _, _ in candidates:
        _check_name(cfg, name, where)
        if name in seen:
            raise ConfigError(
                f"{cfg.path}: suite '{suite}' has two experiments named '{name}'. "
                f"Put every varying axis in the name template ({where}.name = '{template}') "
                "or give the extra experiment another name."
            )
        seen.add(name)

    selected = _select(cfg, suite, [n for n, _, _ in candidates], only, exclude)
    overrides = parse_sets(sets)
    experiments = []
    for name, config, explicit in candidates:
        if name not in selected:
            continue
        config = _method_defaults(_merge(config, overrides), explicit | _paths(overrides))
        _validate_resolved(cfg, config, f"experiment '{name}' of suite '{suite}'")
        _attach_benchmarks(cfg, config, f"experiment '{name}' of suite '{suite}'")
        experiments.append(Experiment(name, suite, config, fingerprint(config)))
    return experiments


def _check_benchmarks(cfg: ConfigFile) -> None:
    """`[benchmarks.NAME]` tables are checked when the file is read, asked for or not."""
    if "benchmarks" not in cfg.data:
        return
    from perl_cli import benchmarks

    try:
        benchmarks.definitions(cfg.data["benchmarks"])
    except benchmarks.BenchmarkError as exc:
        raise ConfigError(f"{cfg.path}: {exc}. Fix the [benchmarks] table.") from None


def _attach_benchmarks(cfg: ConfigFile, config: dict, what: str) -> None:
    """The definitions of the benchmarks an experiment asks for, as config.json's `benchmark_specs`."""
    from perl_cli import benchmarks

    names = config.get("task", {}).get("benchmarks") or []
    if not names:
        return
    try:
        config["benchmark_specs"] = benchmarks.resolve(names, benchmarks.definitions(cfg.data.get("benchmarks")))
    except benchmarks.BenchmarkError as exc:
        raise ConfigError(f"{cfg.path}: {what}: {exc}.") from None


def prompts_per_step(config: dict[str, Any]) -> float:
    """Distinct prompts one optimizer step trains on (one process per experiment).

    TRL counts `per_device_train_batch_size` in completions, `num_generations` of each prompt.
    """
    t = config["training"]
    return t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] / t["num_generations"]


def coverage_warnings(experiments: Iterable[Experiment]) -> list[str]:
    """One line per group of experiments that stop before they have seen their data once.

    Such runs cannot tell their data sizes apart: two sizes above max_steps x prompts per
    step train on the same number of prompts.
    """
    short: dict[tuple[int, float], list[str]] = {}
    for e in experiments:
        size = e.data_size
        per_step = prompts_per_step(e.config)
        if size is not None and e.max_steps * per_step < size:
            short.setdefault((e.max_steps, per_step), []).append(f"{e.name} ({size:,})")
    return [
        f"{len(names)} experiment(s) stop after {steps:,} steps x {per_step:g} prompts = {steps * per_step:,.0f} "
        f"prompts, fewer than their data_size, so part of their data is never seen and larger sizes train "
        f"like smaller ones: {', '.join(names)}. For a data-size study, derive training.max_steps from the "
        f"size (e.g. max_steps = data_size / {per_step:g} for one pass)."
        for (steps, per_step), names in short.items()
    ]


def fingerprint(config: dict[str, Any]) -> str:
    """Hash of the resolved settings: any change that could change results changes it."""
    settings = schema.fingerprint_view({k: v for k, v in config.items() if k not in IDENTITY_KEYS})
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_sets(sets: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` (value in TOML syntax; bare words are strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.learning_rate=1e-4.")
        key, text = (s.strip() for s in item.split("=", 1))
        path = schema.ALIASES.get(key, key)
        _check_path(path, f"--set {item!r}", None)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        value, problem = schema.coerce(path, value)
        if problem:
            raise ConfigError(f"--set {item!r}: {path} {problem}.")
        section, k = path.split(".", 1)
        out.setdefault(section, {})[k] = value
    return out


def split_names(text: str | None, flag: str = "--only") -> list[str]:
    """Comma-separated names; a flag that is given must name something (`--only ,` is an error)."""
    found = [n.strip() for n in (text or "").split(",") if n.strip()]
    if text is not None and not found:
        raise ConfigError(f"{flag} {text!r}: names nothing. Give comma-separated names, e.g. {flag} lora_r16_s42,dora_r16_s42.")
    return found


# --- helpers ----------------------------------------------------------------------


def _select(cfg: ConfigFile, suite: str, names: list[str], only: Iterable[str], exclude: Iterable[str]) -> set[str]:
    """--only/--exclude: names or shell-style globs ('lora_*', '*_s42'); each must match something."""
    only, exclude = list(only), list(exclude)
    for flag, wanted in (("--only", only), ("--exclude", exclude)):
        unknown = [w for w in wanted if not matching(names, w)]
        if unknown:
            hint = _did_you_mean(unknown[0], names)
            raise ConfigError(
                f"{flag}: {', '.join(unknown)} matches no experiment of suite '{suite}'{hint}. "
                f"See the names with `perl plan {suite}`."
            )
    chosen = {n for w in only for n in matching(names, w)} if only else set(names)
    return chosen - {n for w in exclude for n in matching(names, w)}


def matching(names: Iterable[str], pattern: str) -> list[str]:
    """The names equal to `pattern` or matching it as a glob (*, ?, [...])."""
    return [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]


def _matrix_points(cfg: ConfigFile, matrix: Any, where: str) -> list[dict[str, dict[str, Any]]]:
    if not matrix:
        return []
    if not isinstance(matrix, dict):
        raise ConfigError(f"{cfg.path}: {where}.matrix must be a table of axis = [values].")
    axes: list[tuple[str, list]] = []
    for axis, values in matrix.items():
        path = schema.ALIASES.get(axis, axis)
        _check_path(path, f"{cfg.path}: {where}.matrix", cfg, key=axis)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{cfg.path}{_line(cfg, axis)}: {where}.matrix.{axis} must be a non-empty list, "
                f"e.g. {axis} = [{values!r}]."
            )
        for v in values:
            _coerce_or_raise(cfg, path, v, f"{where}.matrix.{axis}", axis)
        axes.append((path, values))
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        point: dict[str, dict[str, Any]] = {}
        for (path, _), value in zip(axes, combo, strict=False):
            section, key = path.split(".", 1)
            point.setdefault(section, {})[key] = schema.coerce(path, value)[0]
        points.append(point)
    return points


def _parse_when(cfg: ConfigFile, rules: Any, where: str) -> list[tuple[dict[str, Any], dict]]:
    if not isinstance(rules, list):
        raise ConfigError(f"{cfg.path}: {where}.when must be an array of tables ([[{where}.when]]).")
    parsed = []
    for i, rule in enumerate(rules):
        rwhere = f"{where}.when[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{cfg.path}: {rwhere} must be a table with `if` and `set`.")
        _check_keys(cfg, rule, {"if", "set"}, rwhere)
        cond, settings = rule.get("if"), rule.get("set")
        if not isinstance(cond, dict) or not cond or not isinstance(settings, dict) or not settings:
            raise ConfigError(
                f"{cfg.path}: {rwhere} needs both `if` and `set` tables, e.g. "
                'if = { method = "vera" }, set = { "training.learning_rate" = 1e-4 }.'
            )
        conditions = {}
        for key, value in cond.items():
            path = schema.ALIASES.get(key, key)
            _check_path(path, f"{cfg.path}: {rwhere}.if", cfg, key=key)
            values = value if isinstance(value, list) else [value]
            conditions[path] = [_coerce_or_raise(cfg, path, v, f"{rwhere}.if", key) for v in values]
        parsed.append((conditions, _as_paths(cfg, settings, f"{rwhere}.set")))
    return parsed


def _apply_when(config: dict, rules: list[tuple[dict[str, Any], dict]]) -> tuple[dict, set[str]]:
    """`config` with the matching rules applied, and the paths set by those conditioned on the method."""
    paths: set[str] = set()
    for conditions, settings in rules:
        if all(_get(config, path) in values for path, values in conditions.items()):
            config = _merge(config, settings)
            if "peft.type" in conditions:
                paths |= _paths(settings)
    return config, paths


def _paths(table: dict[str, dict[str, Any]]) -> set[str]:
    return {f"{section}.{key}" for section, values in table.items() for key in values}


def _method_defaults(config: dict, explicit: set[str]) -> dict:
    """The method's own defaults (methods.METHOD_DEFAULTS) for the paths not in `explicit`.

    e.g. PiSSA and MiLoRA use dropout 0 even when [base] sets lora_dropout = 0.05, and
    VeRA 10x the shared learning rate (methods.method_defaults).
    """
    from perl_cli.methods import method_defaults

    own = method_defaults(config)
    for path, value in own.items():
        if path not in explicit:
            section, key = path.split(".", 1)
            config = _merge(config, {section: {key: value}})
    return config


def _as_paths(cfg: ConfigFile, table: Any, where: str) -> dict[str, dict[str, Any]]:
    """Settings given as nested tables and/or dotted keys → {section: {key: value}}."""
    if not isinstance(table, dict):
        raise ConfigError(f"{cfg.path}: {where} must be a table.")
    out: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key in schema.SCHEMA and (isinstance(value, dict) or key not in schema.ALIASES):
            if not isinstance(value, dict):
                raise ConfigError(f"{cfg.path}{_line(cfg, key)}: {where}.{key} must be a table of settings.")
            items = [(f"{key}.{k}", v, k) for k, v in value.items()]
        elif "." in key or key in schema.ALIASES:
            items = [(schema.ALIASES.get(key, key), value, key)]
        else:
            raise ConfigError(
                f"{cfg.path}{_line(cfg, key)}: unknown section '{key}' in {where}"
                f"{_did_you_mean(key, list(schema.SCHEMA))}. Sections: {', '.join(schema.SCHEMA)}."
            )
        for path, v, shown in items:
            _check_path(path, f"{cfg.path}: {where}", cfg, key=shown)
            section, k = path.split(".", 1)
            out.setdefault(section, {})[k] = _coerce_or_raise(cfg, path, v, where, shown)
    return out


def _check_settings(cfg: ConfigFile, table: Any, where: str) -> None:
    _as_paths(cfg, table, where)


def _check_path(path: str, where: str, cfg: ConfigFile | None, *, key: str | None = None) -> None:
    section, _, k = path.partition(".")
    if section in schema.SCHEMA and k in schema.SCHEMA[section]:
        return
    line = _line(cfg, key or k) if cfg is not None else ""
    if where.startswith(str(cfg.path) if cfg else "\0") and line:
        where = where.replace(f"{cfg.path}:", f"{cfg.path}{line}:", 1)
    raise ConfigError(
        f"{where}: unknown key '{key or path}'{_did_you_mean(path, schema.all_paths())}. "
        "Every key must be one of PeRL's settings (see `perl plan --keys`); fix or remove it."
    )


def _coerce_or_raise(cfg: ConfigFile, path: str, value: Any, where: str, shown: str) -> Any:
    value, problem = schema.coerce(path, value)
    if problem:
        hint = _did_you_mean(str(value), schema.SCHEMA[path.split(".")[0]][path.split(".", 1)[1]].choices or ())
        raise ConfigError(f"{cfg.path}{_line(cfg, shown)}: {where}: {path} = {value!r} {problem}{hint}.")
    return value


def _check_keys(cfg: ConfigFile, table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{cfg.path}{_line(cfg, key)}: unknown key '{key}' at {where}"
                f"{_did_you_mean(key, allowed)}. Allowed here: {', '.join(sorted(allowed))}."
            )


def settings_problems(config: dict[str, Any]) -> list[str]:
    """Problems across settings of one resolved config (each key alone is checked by the schema).

    Shared by plan time (here) and the worker, which re-checks config.json before training.
    """
    from perl_cli.ica import ica_problems
    from perl_cli.methods import validate_method_settings

    t, d = config["training"], config["dataset"]
    problems = list(validate_method_settings(
        config["peft"]["type"], config["peft"], max_steps=t["max_steps"], model_name=config["model"]["model_name_or_path"]
    ))
    problems += ica_problems(config)
    problems += architectures.name_problems(str(config["model"]["model_name_or_path"]))
    from perl_cli.data.tasks import task_problems

    problems += task_problems(config)
    completions = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
    if completions % t["num_generations"]:
        problems.append(
            "training.per_device_train_batch_size x gradient_accumulation_steps "
            f"({t['per_device_train_batch_size']} x {t['gradient_accumulation_steps']} = {completions} completions "
            f"per step) must be a multiple of training.num_generations ({t['num_generations']}); in TRL, "
            "per_device_train_batch_size counts completions, not prompts"
        )
    if d["min_number"] > d["max_number"]:
        problems.append("dataset.min_number must be <= dataset.max_number")
    if not d["operators"] or set(d["operators"]) - set("+-*/"):
        problems.append("dataset.operators must be a non-empty subset of '+-*/'")
    return problems


def _validate_resolved(cfg: ConfigFile, config: dict, what: str) -> None:
    problems = settings_problems(config)
    if problems:
        raise ConfigError(f"{cfg.path}: {what}: " + "; ".join(problems) + ".")


def _render_name(cfg: ConfigFile, template: str, config: dict, where: str) -> str:
    fields = {alias: _get(config, path) for alias, path in schema.ALIASES.items()}
    for _section, values in config.items():
        for key, value in values.items():
            fields.setdefault(key, value)
    fields["alpha"] = _num(fields["alpha"])
    fields["lr"] = f"{fields['lr']:g}"
    try:
        return template.format_map(fields)
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{cfg.path}{_line(cfg, 'name')}: {where}.name = {template!r}: cannot fill it in ({type(exc).__name__}: {exc}). "
            f"Use placeholders such as {{{'}, {'.join(schema.ALIASES)}}}."
        ) from None


def _check_name(cfg: ConfigFile, name: Any, where: str) -> None:
    problem = names.name_problem(name)
    if problem:
        raise ConfigError(
            f"{cfg.path}: experiment name {name!r} in {where} is not allowed ({problem}): names become "
            f"directory names, so {names.RULE}. Change the name or the {where}.name template."
        )


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _get(config: dict, path: str) -> Any:
    section, key = path.split(".", 1)
    return config.get(section, {}).get(key)


def _merge(base: dict, over: dict) -> dict:
    out = {section: dict(values) for section, values in base.items()}
    for section, values in over.items():
        out.setdefault(section, {}).update(values)
    return out


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _line(cfg: ConfigFile | None, key: str | None) -> str:
    """':N' for the first line of the file that assigns or opens `key`; '' if none."""
    if cfg is None or not key:
        return ""
    pattern = re.compile(r'^\s*(?:"?' + re.escape(key) + r'"?\s*=|\[.*\b' + re.escape(key) + r'\b.*\])')
    for number, text in enumerate(cfg.text.splitlines(), 1):
        if pattern.search(text):
            return f":{number}"
    return ""
