"""``python -m autoseg`` and the ``autoseg`` console script (also what ``torchrun -m autoseg train ...`` runs).

The entry point imports nothing but ``sys`` and ``signal`` before it takes over Ctrl-C: typer and a stage's modules
(torch) take seconds to import, and Ctrl-C then printed a KeyboardInterrupt traceback instead of the stages' one line.
"""

import signal
import sys
import time

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


def _exit_interrupted(signum: int, frame: object) -> None:
    """Ctrl-C outside a stage (importing, parsing the command line): one line, exit 130, as the stages end. Raised
    as KeyboardInterrupt, typer turned it into exit 130 without a word while it parsed the command line."""
    sys.stderr.write("autoseg: error: interrupted\n")
    raise SystemExit(INTERRUPTED_EXIT_CODE)


def main() -> None:
    """Run the command line; a stage raises Ctrl-C as KeyboardInterrupt for its cleanup while it runs
    (``autoseg.utils.termination.signals_as_interrupts``)."""
    started = time.time()  # before the imports, which the plan's preprocessing price includes
    signal.signal(signal.SIGINT, _exit_interrupted)
    from autoseg.cli import main as run_command_line

    run_command_line(started)


if __name__ == "__main__":
    main()
