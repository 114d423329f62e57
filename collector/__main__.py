"""``python -m auditlake.collector``: the `auditlake` command."""

import sys

from auditlake.collector.cli import main

sys.exit(main())
