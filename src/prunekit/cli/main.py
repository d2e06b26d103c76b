"""The command table (:data:`COMMANDS`): each command is a thin function over :mod:`prunekit.pipeline`.

Bad input raises :class:`~prunekit.core.errors.PrunekitError`, printed as one line naming the
flag (exit code 2; 130 on Ctrl-C); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from prunekit.cli import compare, export, prune, recover
from prunekit.cli.console import console, render_error
from prunekit.core.errors import PrunekitError
from prunekit.engine.ranks import requested_world

COMMANDS = {
    "prune": prune.prune,
    "eval": prune.eval_,
    "info": prune.info,
    "demo": prune.demo,
    "compare": compare.compare,
    "recover": recover.recover,
    "export": export.export,
    "bench": export.bench,
    "report": export.report,
}

SPREAD = ("prune", "compare")  # the commands that run over torchrun ranks (the others are refused under WORLD_SIZE > 1)

app = typer.Typer(
    name="prunekit", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Structured pruning of causal LMs without training: BlockPruner, its baselines and LLM-Pruner.",
)
for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """``--debug`` is read by :func:`main` from the command line."""


def _command(argv: list[str]):
    """The click command that ``argv`` runs (to name its flags in an error), or None."""
    names = [a for a in argv if not a.startswith("-")]
    commands = getattr(typer.main.get_command(app), "commands", {})
    return commands.get(names[0]) if names else None


def _check_ranks(argv: list[str]) -> None:
    """Under torchrun (``WORLD_SIZE > 1``) only the commands of :data:`SPREAD` run: the others would repeat
    their whole work, and their writes, on every rank."""
    names = [a for a in argv if not a.startswith("-")]
    world = requested_world()
    if world > 1 and names and names[0] in COMMANDS and names[0] not in SPREAD:
        raise PrunekitError(f"prunekit {names[0]} does not spread over torchrun ranks (WORLD_SIZE {world}); only prune and compare do.",
                            "Run it in one process, without torchrun.")


def main() -> None:
    """Console entry point: one-line errors, exit 2 on bad input, 130 on Ctrl-C."""
    debug = "--debug" in sys.argv
    try:
        _check_ranks(sys.argv[1:])
        app(standalone_mode=False)
    except PrunekitError as e:
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(render_error(str(e), _command(sys.argv[1:])))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted (finished steps are kept in the journal)")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors (typer ships its own click: recognised by their interface)
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(2)
        raise


