"""`recloop` command line: a thin shell over the library. Each command group lives in
`recloop.commands.<group>`; this module only mounts them and maps errors to exit codes.

Exit codes: 0 ok, 2 configuration error, 3 data failed validation, 130 SIGINT, 143 SIGTERM, 1 anything else.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn, Protocol, cast

import typer

from recloop import interrupts
from recloop.errors import RecloopError

app = typer.Typer(
    name="recloop",
    help="recloop: recommender pipelines from raw events to a gated, served, self-improving model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, group name or None to mount its commands at the top level)
COMMAND_MODULES: tuple[tuple[str, str | None], ...] = (
    ("recloop.commands.init", None),
    ("recloop.commands.config", "config"),
    ("recloop.commands.data", "data"),
    ("recloop.commands.step", "step"),
    ("recloop.commands.pipeline", None),
    ("recloop.commands.model", "model"),
    ("recloop.commands.serve", None),
    ("recloop.commands.simulate", None),
)


def _mount() -> None:
    for module_name, group in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # group not written yet
                continue
            raise
        sub: typer.Typer = module.app
        if group is None:
            for command in sub.registered_commands:
                app.registered_commands.append(command)
        else:
            app.add_typer(sub, name=group)


_mount()


class _ClickException(Protocol):
    """click's ClickException (typer's copy or click's own): prints itself as the usage error it is."""

    def show(self) -> None: ...


def entry() -> NoReturn:
    """The `recloop` console script: `main`, then exit with its code."""
    try:
        code = main(restore_signals=False)
    except interrupts.Interrupted as exc:  # after the command ended, before the handlers were dropped
        interrupts.ignore()
        sys.stderr.write(exc.message() + "\n")
        code = exc.exit_code
    interrupts.ignore()  # a signal from now on must not turn the decided exit code into a traceback
    sys.exit(code)


def main(argv: list[str] | None = None, restore_signals: bool = True) -> int:
    """Run one command: user-facing errors print one message and set the exit code; SIGINT and SIGTERM
    print what they stopped and exit 130 and 143."""
    restore = interrupts.saved_handlers()
    try:
        interrupts.install()
        return _run(argv)
    except interrupts.Interrupted as exc:  # before the command started, or while it printed its error
        sys.stderr.write(exc.message() + "\n")
        return exc.exit_code
    finally:
        if restore_signals:
            restore()


def _run(argv: list[str] | None) -> int:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True)
    try:
        app(args=argv, standalone_mode=False)
    except interrupts.Interrupted as exc:
        err.print(escape(exc.message()), highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except RecloopError as exc:
        # Escaped: messages quote data values and paths, and '[/x]' there must print, not parse as markup.
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:
        # Usage errors: typer ships its own copy of click (typer._click) or uses click itself; both have
        # ClickException / Abort / Exit classes under these names.
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in names:
            cast(_ClickException, exc).show()
            return 2 if "UsageError" in names else 1
        if "Abort" in names:
            # click turns a KeyboardInterrupt it sees (SIGINT before `interrupts.install`) into Abort.
            return 130 if isinstance(exc.__context__, KeyboardInterrupt) else 1
        if "Exit" in names:
            return int(getattr(exc, "exit_code", 0) or 0)
        raise
    return 0


if __name__ == "__main__":
    entry()
