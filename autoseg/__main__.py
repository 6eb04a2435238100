"""``python -m autoseg`` (also what ``torchrun -m autoseg train ...`` runs)."""

from autoseg.cli import main

main()
