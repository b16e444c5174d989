"""`python -m rmbench_fast.judge`: a generative run as a stand-alone command."""

import sys

from ..commands.judge import main

sys.exit(main())
