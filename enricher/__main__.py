"""`python -m enricher`; `tpipe enricher` imports `main` from here."""

import sys

from enricher import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
