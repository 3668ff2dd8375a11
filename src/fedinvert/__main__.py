"""`python -m fedinvert` is the `fedinvert` command."""

from fedinvert.cli import main

raise SystemExit(main())
