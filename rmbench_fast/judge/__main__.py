"""`python -m rmbench_fast.judge`: a generative run as a stand-alone command."""

import sys

from .cli import main

sys.exit(main())
