"""spheroid_p2p: peer-to-peer training and serving of BlockTrain byte language models.

Importing the package loads neither torch nor asyncio; see ``wire`` (the pure codec),
``core`` (sans-I/O state machines), ``ml`` (the model, torch only) and ``node`` (the
composition root).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
