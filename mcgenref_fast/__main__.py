"""`python -m mcgenref_fast` runs the CLI."""
import sys

from mcgenref_fast.cli import main

sys.exit(main())
