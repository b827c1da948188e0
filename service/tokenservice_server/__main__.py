"""``python -m tokenservice_server`` is the ``tokenservice`` command."""

import sys

from tokenservice_server.cli import main

sys.exit(main())
