"""`python -m fedinvert` is the `fedinvert` command."""

from fedinvert.cli import run

run()
