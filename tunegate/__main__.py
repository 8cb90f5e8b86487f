"""``python -m tunegate`` runs the command line."""

from tunegate.cli import main

main()
