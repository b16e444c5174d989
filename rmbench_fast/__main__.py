"""`python -m rmbench_fast`."""

import sys

from .cli import main

sys.exit(main())
