"""Where bars come from: provider websockets (Alpaca...) and the local replay server.

Every feed speaks `daemon.feeds.base.Feed` and runs the shared reconnect loop
in `daemon.feeds.reconnect`.
"""
