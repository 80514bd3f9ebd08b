"""The `vseam` command: a thin shell over library code, one module per command."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from vseam_run.cli import common
from vseam_run.errors import VseamError

app = typer.Typer(
    name="vseam",
    help="Causal interpretability of vision-language models (V-SEAM): edits, head search, modulation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from vseam_run import __version__

        common.console().print(f"vseam {__version__}", highlight=False, markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Causal interpretability of vision-language models (V-SEAM): edits, head search, modulation."""


def _register() -> None:
    # Imported here so `vseam --help` stays fast and a broken optional module names itself.
    from vseam_run.cli import bench, compare, models, run, runs, show, specs, validate, zoo
    from vseam_run.cli import findings, labels, sweep

    app.command("run")(run.run)
    app.command("validate")(validate.validate)
    app.add_typer(models.app, name="models")
    app.add_typer(specs.app, name="specs")
    app.command("runs")(runs.runs)
    app.command("show")(show.show)
    app.command("compare")(compare.compare)
    app.add_typer(bench.app, name="bench")
    app.add_typer(zoo.app, name="zoo")
    # Findings across runs (issue 13): sweeps, labels, sharing, reports, exports.
    app.command("sweep")(sweep.sweep)
    app.command("tag")(labels.tag)
    app.command("note")(labels.note)
    app.command("rm")(labels.rm)
    app.command("share")(findings.share)
    app.command("report")(findings.report)
    app.command("export")(findings.export)
    from vseam_run.cli import ask  # issue 21: one question, base vs modulated

    app.command("ask")(ask.ask)


def _classes(name: str) -> tuple[type, ...]:
    """`name` from every click the installed typer may raise from: click itself and the copy that
    typer ≥ 0.2x vendors as `typer._click` (its exceptions are not click's, so `except
    click.ClickException` misses them)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


_EXIT, _ABORT = _classes("Exit"), _classes("Abort")


def _is_usage_error(e: BaseException) -> bool:
    # By behaviour, not by class: whichever click raised it, a usage error can show itself
    # (usage line + message) and knows its exit code.
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def _interrupted() -> int:
    common.err_console().print("interrupted", highlight=False, markup=False)
    return 130


def run_app(typer_app: typer.Typer, argv: list[str] | None) -> int:
    """Run a Typer app in-process and turn every way it can end into an exit code and at most a
    short message: VseamError and usage errors → 2, Ctrl-C → 130. No traceback for either."""
    try:
        if typer_app is app and not app.registered_commands:
            _register()
        # The click command is driven directly (make_context + invoke, click's own API) rather
        # than through typer's main(), which turns a Ctrl-C into a silent exit code 130 and
        # formats errors itself; here every ending reaches the handlers below.
        command = typer.main.get_command(typer_app)
        args = list(sys.argv[1:] if argv is None else argv)
        if (problem := common.set_option_problem(args)) is not None:
            raise VseamError(problem)
        with command.make_context("vseam", args) as ctx:
            rv = command.invoke(ctx)
    except VseamError as e:
        # The message is plain text: a path like data/[old]/q.json must not be read as markup.
        common.err_console().print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except _ABORT:
        return _interrupted()
    except _EXIT as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except EOFError:  # stdin closed under a prompt
        return _interrupted()
    except Exception as e:
        if not _is_usage_error(e):
            raise
        e.show()  # type: ignore[attr-defined]
        code: Any = getattr(e, "exit_code", 2)
        return 2 if code in (None, 0, 1) else int(code)
    return rv if isinstance(rv, int) else 0


def cli(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return the exit code (tests call this directly)."""
    try:
        return run_app(app, argv)
    except KeyboardInterrupt:  # between typer handing back and us returning
        return _interrupted()


def main() -> None:
    sys.exit(cli(sys.argv[1:]))
