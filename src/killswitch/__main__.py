"""Run the `killswitch` command as `python -m killswitch`."""

import sys

from killswitch.cli import main

sys.exit(main())
