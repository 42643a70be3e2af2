"""`python -m hf_distill ...` runs the `hf-distill` command (the library itself never imports `hf_distill.command`)."""

from .command.cli import main

raise SystemExit(main())
