"""`python -m hf_distill.command ...` runs the `hf-distill` command (as does `python -m hf_distill`)."""

from .cli import main

raise SystemExit(main())
