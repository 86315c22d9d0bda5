"""The feed providers the daemon knows, by the name `[feed] provider` chooses.

A provider is one module that defines its `Feed` and a `FeedProvider` entry;
adding it here is the whole change for the daemon to offer it.
"""

from __future__ import annotations

from daemon.feeds import alpaca, finnhub, massive, replay_feed
from daemon.feeds.provider import FeedProvider

FEEDS: dict[str, FeedProvider] = {
    "alpaca": alpaca.PROVIDER,
    "massive": massive.PROVIDER,
    "finnhub": finnhub.PROVIDER,
    "replay": replay_feed.PROVIDER,
}
