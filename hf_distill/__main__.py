"""`python -m hf_distill ...` runs the `hf-distill` command."""

from .cli import main

raise SystemExit(main())
