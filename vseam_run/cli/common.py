"""Options shared by several commands, each with a VSEAM_ environment variable, and output helpers."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

DEFAULT_DB = "runs.db"

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="VSEAM_DB",
        help="Run registry: a file path (SQLite) or an SQLAlchemy URL. Env: VSEAM_DB.",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        envvar="VSEAM_DEVICE",
        help="Override the spec's device: auto, cpu, cuda or cuda:N. Env: VSEAM_DEVICE.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


class _WholeConsole(Console):
    """A console whose tables keep their numbers and words whole (vseam_run/tables.py)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        from rich.table import Table

        from vseam_run.tables import keep_whole

        tables = [keep_whole(o) for o in objects if isinstance(o, Table)]
        if tables and kwargs.get("width") is None:
            from rich.measure import Measurement

            # Rich squeezes a table to the console width past its columns' minimums (cutting
            # numbers again): a table that needs more runs past the edge instead.
            need = max(Measurement.get(self, self.options.update(width=10_000), t).minimum for t in tables)
            if need > self.width:  # print(width=) can only narrow: widen the console for this call
                before = self._width
                self.width = need
                try:
                    return super().print(*objects, **kwargs)
                finally:
                    self._width = before
        super().print(*objects, **kwargs)


def console() -> Console:
    """A console bound to the current stdout (so in-process tests capture it)."""
    return _WholeConsole(file=sys.stdout, soft_wrap=True)


def err_console() -> Console:
    return _WholeConsole(file=sys.stderr, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Plain JSON on stdout: never through rich, which would wrap long lines."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_json_with_figure(obj: dict[str, Any], figure: Any) -> None:
    """A command's JSON result with the path of the figure it wrote (null when none)."""
    print_json({**obj, "figure": None if figure is None else str(figure)})


def set_option_problem(argv: list[str]) -> str | None:
    """`--set seed 1` (a space for the `=`): click would take `seed` as the value and complain
    about an unexpected extra argument `1`; say what is wrong with the override instead."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        value = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else (arg[6:] if arg.startswith("--set=") else None)
        if value is not None and "=" not in value and not value.startswith("-"):
            nxt = argv[i + 2] if arg == "--set" and i + 2 < len(argv) else ""
            example = f"--set {value}={nxt}" if nxt and not nxt.startswith("-") else f"--set {value}=VALUE"
            return f"--set {value}: expected key=value (e.g. {example})"
    return None
