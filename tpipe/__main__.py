"""`python -m tpipe` is the `tpipe` command."""

import sys

from tpipe.cli import main

sys.exit(main())
