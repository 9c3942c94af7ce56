"""Typer options generated from a pydantic model's fields: `spear-mm run` from `RunConfig`, `plan`'s planner flags
from `PlannerOptions`. Each field gives its flag (`--field-name`, or the spellings in its `json_schema_extra`), its
type, its default (shown in `--help`) and its help (`Field(description=...)`); a sub-model's fields become
`--prefix-field` flags. Options show the field's default, but only the flags typed on the command line override
a config file (click's parameter source tells them apart)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from spear_mm.cli.output import console
from spear_mm.errors import SpearError, field_errors


@dataclass(frozen=True)
class Flag:
    """One generated option: the Python parameter, the field it sets (`path`), its spellings and how it shows."""

    param: str
    path: tuple[str, ...]
    names: tuple[str, ...]
    kind: Any  # the type Typer parses: bool, int, float, str or an Enum
    default: Any  # the field's default, shown in --help (a config file overrides it unless the flag is typed)
    help: str
    panel: str
    argument: bool = False
    hidden: bool = False
    metavar: str | None = None

    @property
    def spelling(self) -> str:
        return self.names[0].split("/")[0] if self.names else self.param.upper()


def model_flags(
    model: type[BaseModel], *, prefix: str = "", panel: str = "", skip: Iterable[str] = (), path: tuple = ()
) -> list[Flag]:
    """The flags of every field of `model` (sub-models' fields flattened with their prefix), in field order."""
    flags: list[Flag] = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if name in skip:
            continue
        here = str(extra.get("panel") or panel)
        sub = _submodel(field.annotation)
        if sub is not None:
            inner = str(extra.get("prefix") or name)
            flags += model_flags(sub, prefix=inner, panel=here, skip=list(extra.get("skip") or ()), path=(*path, name))
            continue
        spellings = [str(f) for f in extra.get("flags") or ()]
        long = [f for f in spellings if f.startswith("--")] or [f"--{prefix + '-' if prefix else ''}{_dash(name)}"]
        kind = _kind(field.annotation, name)
        names = tuple(long + [f for f in spellings if not f.startswith("--")])
        if kind is bool:
            names = tuple(f"{n}/--no-{n[2:]}" if n.startswith("--") else n for n in names)
        flags.append(
            Flag(
                param="_".join((*path, name)),
                path=(*path, name),
                names=() if extra.get("argument") else names,
                kind=kind,
                default=_default(field),
                help=_sentence(field.description or ""),
                panel=here,
                argument=bool(extra.get("argument")),
                metavar=str(extra["metavar"]) if extra.get("metavar") else None,
            )
        )
    return flags


def aliases(flags: list[Flag], spellings: Mapping[str, str]) -> list[Flag]:
    """Hidden flags (`old spelling -> current spelling`) that set the same field: users' scripts keep working."""
    by_name = {f.spelling: f for f in flags}
    out = []
    for old, new in spellings.items():
        f = by_name[new]
        names = (f"{old}/--no-{old[2:]}",) if f.kind is bool else (old,)
        out.append(Flag(f"{f.param}__{_ident(old)}", f.path, names, f.kind, f.default, f.help, f.panel, hidden=True))
    return out


def default_text(value: Any) -> str | None:
    """How `--help` shows a field's default (None: no default shown)."""
    if value is None or value == {} or value == []:
        return None
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parameters(flags: list[Flag]) -> list[inspect.Parameter]:
    """The `inspect.Parameter`s Typer builds the options from, with the fields' defaults (shown in --help)."""
    out = []
    for f in sorted(flags, key=lambda f: not f.argument):
        common: dict[str, Any] = dict(help=f.help, rich_help_panel=None if f.argument else f.panel, hidden=f.hidden)
        if f.metavar:
            common["metavar"] = f.metavar
        if f.argument:
            info = typer.Argument(None, show_default=False, metavar=f.param.upper(), **common)
        else:
            info = typer.Option(_typer_default(f), *f.names, **common)
        out.append(inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=f.kind | None))
    return out


def typed(ctx: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters typed on the command line (the others hold the fields' defaults, which a config file
    overrides)."""
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}


def option(name: str, annotation: Any, default: Any, *decls: str, help: str, panel: str) -> inspect.Parameter:
    """A hand-written option beside the generated ones (for what is not a config field: the config file itself)."""
    info = typer.Option(default, *decls, help=help, rich_help_panel=panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


CONTEXT = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
"""The parameter that hands a generated command its Typer context (for `typed`)."""


def _typer_default(f: Flag) -> Any:
    if f.kind is bool or f.default is None:
        return f.default
    text = default_text(f.default)
    return None if text is None else f.kind(text) if f.kind in (int, float) else text


def with_signature(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """`func(**values)` with the signature Typer reads its options from (arguments before options)."""
    ordered = sorted(params, key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))
    ordered = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in ordered]  # Typer passes keywords
    func.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    return func


def overrides(flags: list[Flag], values: Mapping[str, Any], deprecated: Mapping[str, str] = {}) -> dict[str, Any]:
    """The fields the given flags set, nested as the model has them (`{"planner": {"budget": 3}}`); a field given
    under two spellings is refused; a deprecated spelling warns (`deprecated`: spelling -> message)."""
    out: dict[str, Any] = {}
    given: dict[tuple[str, ...], str] = {}
    for f in flags:
        value = values.get(f.param)
        if value is None:
            continue
        if f.path in given:
            raise SpearError(f"{given[f.path]} and {f.spelling} are the same option: give one.")
        given[f.path] = f.spelling
        if f.spelling in deprecated:
            console.print(f"[yellow]warning:[/] {deprecated[f.spelling]}", highlight=False)
        here = out
        for key in f.path[:-1]:
            here = here.setdefault(key, {})
        here[f.path[-1]] = value.value if isinstance(value, Enum) else value
    return out


def flag_problem(flags: list[Flag], values: Mapping[str, Any], exc: ValidationError) -> str:
    """Pydantic's first error as one sentence naming the flag as typed (`--planner-budget -1: Input should …`)."""
    err = field_errors(exc)[0]
    loc = tuple(map(str, err.loc))
    if not loc:  # a check across fields: its message names them
        return f"{err.msg}."
    for n in range(len(loc), 0, -1):  # an item of a list field (`uniform_seeds.1`) is named by the list's flag
        path = loc[:n]
        typed_ = [f.spelling for f in flags if f.path[-n:] == path and values.get(f.param) is not None]
        named = typed_[0] if typed_ else next((f.spelling for f in flags if f.path[-n:] == path), None)
        if named:
            return f"{named} {err.input}: {err.msg}."
    return f"{'.'.join(loc)} {err.input}: {err.msg}."


def given_spellings(flags: list[Flag], values: Mapping[str, Any]) -> list[str]:
    """The spellings of the flags given (not None), as the user typed them."""
    return [f.spelling for f in flags if values.get(f.param) is not None]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _kind(annotation: Any, name: str) -> Any:
    """What Typer parses: the annotation without None; a Literal becomes an Enum (Typer lists its values); lists,
    mappings and unions are text that the model's validators parse (e.g. '0.1,0.3')."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0] if len(args) == 1 else str
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return _enum(name, tuple(args))
    if isinstance(annotation, type) and issubclass(annotation, (bool, int, float, str, Enum)):
        return annotation
    return str


@cache
def _enum(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum("".join(p.title() for p in name.split("_")), [(v, v) for v in values], type=str)  # type: ignore[return-value]


def _default(field: FieldInfo) -> Any:
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _ident(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""
