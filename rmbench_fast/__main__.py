"""`python -m rmbench_fast`."""

import sys

from rmbench_fast.utils.install_check import uninstalled_checkout_message

message = uninstalled_checkout_message()
if message is not None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

from rmbench_fast.commands import main  # noqa: E402

sys.exit(main())
