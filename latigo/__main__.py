"""`python -m latigo` is the same as the `latigo` console script."""

import sys

from latigo.cli import main

sys.exit(main())
