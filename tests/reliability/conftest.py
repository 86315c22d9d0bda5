"""The Telegram fixtures (a local Bot API server, a subscriber store, a fake backend) for the
reliability suite, from the Telegram tests' own conftest rather than a second copy."""

from tests.daemon.telegram.conftest import api, backend, store

__all__ = ["api", "backend", "store"]
