"""`python -m sync` is `tabular-sync`."""

import sys

from sync.cli import main

sys.exit(main())
