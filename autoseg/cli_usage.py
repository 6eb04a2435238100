"""Command-line usage errors (unknown option, missing argument, bad value, extra argument) as one line.

Click printed them as four lines of its own (``Usage: ...``, ``Try ...``, a blank, ``Error: ...``), unlike
every other autoseg error, and nnU-Net's spellings got no hint: ``predict -chk best`` is click's ``-c hk``
(``-c`` takes a value) and ended in 'Got unexpected extra argument(s) (best)'. ``OneLineUsageGroup`` is the
``autoseg`` app's command group; kept out of cli.py, which only parses and calls.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import IO, Any, Iterator, Optional, Sequence

import typer
import typer.core

# The click exceptions typer parses with: click's own, or (typer 0.2x) those of typer's copy of click, which are
# other classes, so that the stock click's do not catch them.
_PARSER_EXCEPTIONS = sys.modules[typer.BadParameter.__module__]
UsageError = _PARSER_EXCEPTIONS.UsageError
_get_current_context = importlib.import_module(_PARSER_EXCEPTIONS.__name__.rsplit(".", 1)[0] + ".globals").get_current_context
NO_ARGS_IS_HELP = getattr(_PARSER_EXCEPTIONS, "NoArgsIsHelpError", ())  # click < 8.2 prints that help without an error

# nnU-Net v2's option spellings -> (autoseg's parameter that takes the value, how to name it in the hint). The hint
# is given where the command has that parameter and does not itself take the nnU-Net spelling (evaluate's -p).
NNUNET_SPELLINGS: dict[str, tuple[str, str]] = {
    "-chk": ("checkpoint", "--checkpoint"),
    "-tr": ("network", "--network (nnU-Net's trainer variants are --network, --epochs and --set here)"),
    "-p": ("plans_name", "--plans-name"),
    "-device": ("device", "--device"),
    "-step_size": ("step", "--step"),
    "--disable_tta": ("no_tta", "--no-tta"),
    "--save_probabilities": ("save_probabilities", "--save-probabilities"),
    "--npz": ("save_probabilities", "--save-probabilities"),
    "--continue_prediction": ("continue_", "--continue"),
    "--c": ("continue_", "--continue"),
    "-num_parts": ("num_parts", "--num-parts"),
    "-part_id": ("part_id", "--part-id"),
    "-pretrained_weights": ("pretrained_weights", "--pretrained-weights"),
    "-gpu_memory_target": ("gpu_memory", "--gpu-memory"),
    "-overwrite_plans_name": ("plans_name", "--plans-name"),
    "-d": ("dataset", "the dataset as the first argument, without -d"),
}


def echo_error(message: str, file: IO[Any] | None = None) -> None:
    """Print ``message`` as autoseg's one error line (on stderr unless ``file``), with the undecodable bytes of the
    file names it holds shown as ``\\xff`` (as ``printable_path`` does), never as ``\\udcff``."""
    from autoseg.paths import printable_text

    typer.echo(f"autoseg: error: {printable_text(message)}", file=file, err=True)


class OneLineUsageError(UsageError):
    """A usage error shown as autoseg's other errors are: ``autoseg: error: <command>: <problem>; see '... --help'``."""

    def show(self, file: IO[Any] | None = None) -> None:
        echo_error(self.message, file)


def one_line_usage_error(error: UsageError, args: Sequence[str], group_ctx: typer.Context | None = None) -> UsageError:
    """``error`` as one line naming the command, with a hint for each nnU-Net spelling among ``args``, and where
    to read the command's options; click's request for help on a bare command (``autoseg``) is left as it is.
    ``group_ctx``: the context of the group that ran the failing command (for errors that carry none)."""
    if isinstance(error, (OneLineUsageError, NO_ARGS_IS_HELP)):
        return error
    command_path, command = _failing_command(error, group_ctx)
    subcommand = command_path.split(" ", 1)[1] if " " in command_path else ""
    hints = nnunet_spelling_hints(command, args)
    problem = error.format_message().rstrip(".")
    where = f"{subcommand}: " if subcommand else ""
    line = f"{where}{problem}{''.join(f'; {hint}' for hint in hints)}; see '{command_path} --help'"
    wrapped = OneLineUsageError(line, error.ctx)
    wrapped.exit_code = error.exit_code
    return wrapped


def _failing_command(error: UsageError, group_ctx: typer.Context | None) -> tuple[str, Any]:
    """(command path, command) of the command a usage error is about: its own context's, else the subcommand the
    group was running (click raises 'Option -f requires an argument' without a context: it was named as autoseg's)."""
    if error.ctx is not None:
        return error.ctx.command_path, error.ctx.command
    if group_ctx is None:
        return "autoseg", None
    name = group_ctx.invoked_subcommand
    if name is None:
        return group_ctx.command_path, group_ctx.command
    return f"{group_ctx.command_path} {name}", group_ctx.command.get_command(group_ctx, name)


def nnunet_spelling_hints(command: Any, args: Sequence[str]) -> list[str]:
    """'<flag> is nnU-Net's spelling: use <option>' for each nnU-Net flag in ``args`` that ``command``
    does not take but has the counterpart of."""
    if command is None:
        return []
    names = {param.name for param in command.params}
    flags = {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}
    options = args[: list(args).index("--")] if "--" in args else args  # after --, every token is an argument
    given = {arg.split("=", 1)[0] for arg in options}
    return [f"{flag} is nnU-Net's spelling: use {name}" for flag, (param, name) in NNUNET_SPELLINGS.items()
            if flag in given and flag not in flags and param in names]


_ARGS_KEY = "autoseg.args"  # the command line as given (in the context's meta), for the hints of a usage error


def with_spelling_hints(message: str) -> str:
    """``message`` of an autoseg error with a hint for each nnU-Net spelling on the running command's line: click
    reads ``predict -m M -chk`` as ``-c hk``, and the refusal that -c would be ignored named no cause."""
    ctx = _get_current_context(silent=True)
    if ctx is None:
        return message
    hints = nnunet_spelling_hints(ctx.command, ctx.meta.get(_ARGS_KEY, []))
    return message + "".join(f"; {hint}" for hint in hints)


@contextlib.contextmanager
def _one_line_usage_errors(args: Sequence[str], group_ctx: typer.Context | None = None) -> Iterator[None]:
    """Re-raise a usage error of what runs inside as one line with nnU-Net spelling hints."""
    try:
        yield
    except UsageError as exc:
        raise one_line_usage_error(exc, args, group_ctx) from None


class OneLineUsageGroup(typer.core.TyperGroup):
    """A command group whose usage errors, and its commands', are one line, as autoseg's other errors are."""

    def make_context(self, info_name: Optional[str], args: list[str], parent: Optional[typer.Context] = None,
                     **extra: Any) -> typer.Context:
        with _one_line_usage_errors(args):
            ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta[_ARGS_KEY] = list(args)
        return ctx

    def invoke(self, ctx: typer.Context) -> Any:
        with _one_line_usage_errors(ctx.meta.get(_ARGS_KEY, []), ctx):
            return super().invoke(ctx)
