"""Where bars come from: provider websockets (Alpaca...) and the local replay server.

Every feed speaks `daemon.feeds.base.Feed`, is built from one `FeedOptions`
(`options.py`) and runs the shared reconnect loop in `daemon.feeds.reconnect`.
A provider is one module defining its feed and a `FeedProvider` entry
(`provider.py`), plus its line in `registry.py`.
"""
