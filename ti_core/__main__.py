"""`python -m ti_core ...`: the command line (ti_core/cli/main.py)."""

import sys

from ti_core.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
