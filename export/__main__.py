"""`python -m export`: see export/build.py."""

import sys

from export.build import main

sys.exit(main())
