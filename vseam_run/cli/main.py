"""The `vseam` command: a thin shell over library code, one module per command."""

from __future__ import annotations

import sys

import click
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


def _register() -> None:
    # Imported here so `vseam --help` stays fast and a broken optional module names itself.
    from vseam_run.cli import bench, compare, models, run, runs, show, validate, zoo
    from vseam_run.cli import findings, labels, sweep

    app.command("run")(run.run)
    app.command("validate")(validate.validate)
    app.add_typer(models.app, name="models")
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


def cli(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return the exit code (tests call this directly)."""
    if not app.registered_commands:
        _register()
    try:
        rv = app(args=argv, prog_name="vseam", standalone_mode=False)
    except VseamError as e:
        # The message is plain text: a path like data/[old]/q.json must not be read as markup.
        common.err_console().print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        common.err_console().print("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


def main() -> None:
    sys.exit(cli(sys.argv[1:]))
