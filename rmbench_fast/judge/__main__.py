"""`python -m rmbench_fast.judge`: a generative run as a stand-alone command."""

import sys

from rmbench_fast.commands.judge import main

sys.exit(main())
