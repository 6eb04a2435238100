"""``python -m autoseg`` and the ``autoseg`` console script (also what ``torchrun -m autoseg train ...`` runs).

The entry point imports nothing but ``sys`` before it takes over Ctrl-C: typer and a stage's modules (torch)
take seconds to import, and Ctrl-C then printed a KeyboardInterrupt traceback instead of the stages' one line.
"""

import sys

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


def main() -> None:
    """Run the command line; Ctrl-C before a stage handles it itself (while importing, parsing) ends as the
    stages end it: ``autoseg: error: interrupted``, exit code 130."""
    try:
        from autoseg.cli import main as run_command_line

        run_command_line()
    except KeyboardInterrupt:
        sys.stderr.write("autoseg: error: interrupted\n")
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None


if __name__ == "__main__":
    main()
