"""Entry point: wires the commands and is the one place that maps errors to exit codes."""

from __future__ import annotations

import sys

import click
import typer

from .. import __version__
from ..errors import LLEError
from ._common import err_console
from . import enhance, models, train
from . import eval as eval_cmd
from . import sample as sample_cmd
from .residual_tokens import residual_tokens

app = typer.Typer(
    name="lle",
    help="Enhance low-light and backlit photos with research models (LLFlow, RAVE, CLIP-LIT, SCL-LLE, Zero-DCE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("enhance", short_help="Enhance low-light or backlit photos.")(enhance.enhance)
app.command("eval", short_help="Measure PSNR/SSIM against references.")(eval_cmd.eval_)
app.command("sample", short_help="Draw diverse enhancements from a flow (LLFlow).")(sample_cmd.sample)
app.add_typer(models.app, name="models")
app.add_typer(train.app, name="train")
app.command("residual-tokens", short_help="Explain a RAVE residual with CLIP tokens.")(residual_tokens)


def _version(value: bool) -> None:
    if value:
        print(f"lle {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def _error(message: str) -> None:
    err_console.print(f"[bold red]Error:[/bold red] {message}", markup=True, soft_wrap=True, highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    try:
        rv = app(args=argv, prog_name="lle", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        _error("interrupted")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        _error("interrupted; no partial output was left behind")
        return 130
    except LLEError as e:
        _error(str(e))
        return e.exit_code
    except BrokenPipeError:
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
