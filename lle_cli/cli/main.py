"""Entry point: wires the commands and is the one place that maps errors to exit codes."""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from .._threads import prepare_process
from ..errors import LLEError
from ._common import (
    error,
)

# recent typer ships its own copy of click, so its exception classes are found through typer
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# name -> (module, attribute, one-line summary). A command's module (and with it torch) is imported only
# when that command runs or shows its own help, so `lle --help` and `lle --version` stay fast.
# The attribute is a command function or a Typer sub-app.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "enhance": ("enhance", "enhance", "Enhance low-light or backlit photos."),
    "eval": ("eval", "eval_", "Measure PSNR/SSIM against references."),
    "sample": ("sample", "sample", "Draw diverse enhancements from a flow (LLFlow)."),
    "models": ("models", "app", "List, download, import and verify model weights."),
    "train": ("train", "app", "Train models."),
    "residual-tokens": ("residual_tokens", "residual_tokens", "Explain a RAVE residual with CLIP tokens."),
    "score-ood": ("score_ood", "app", "Flag inputs an LLFlow model has not seen (Mahalanobis OOD score)."),
    "runs": ("runs", "app", "Work with run records: merge the records of a sharded batch."),
}


def _load_command(name: str) -> TyperCommand | TyperGroup:
    module, attr, summary = COMMANDS[name]
    obj = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name, short_help=summary)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    cmd.short_help = summary
    return cmd


class _LazyGroup(TyperGroup):
    """Lists commands from ``COMMANDS`` and imports a command's module only to run it."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        # what the help listing sees: a name and a summary, nothing imported
        if cmd_name not in COMMANDS:
            return None
        return self.commands.get(cmd_name) or TyperCommand(cmd_name, short_help=COMMANDS[cmd_name][2])

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, TyperCommand | TyperGroup | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in COMMANDS and name not in self.commands:
            self.commands[name] = _load_command(name)
        return name, self.commands.get(name, cmd), rest


app = typer.Typer(
    name="lle",
    cls=_LazyGroup,
    help="Enhance low-light and backlit photos with research models (LLFlow, RAVE, CLIP-LIT, SCL-LLE, Zero-DCE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    error(f"{message}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    prepare_process()  # thread count and OpenMP's idle policy, read when torch loads
    try:
        rv = app(args=argv, prog_name="lle", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _error("interrupted")
        return 130
    except _ClickException as e:
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
