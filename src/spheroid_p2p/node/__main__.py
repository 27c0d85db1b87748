"""``python -m spheroid_p2p.node``: see :mod:`spheroid_p2p.node.cli`."""

from __future__ import annotations

import sys

from spheroid_p2p.node.cli import main

sys.exit(main())
