"""What a new subscriber finds retained on a broker: a fresh aiomqtt client, a wildcard
subscription, and every message that arrives flagged retained until the broker is quiet."""

from __future__ import annotations

import asyncio

import aiomqtt


async def retained(
    port: int,
    topic: str = "#",
    *,
    quiet_s: float = 0.5,
    username: str | None = None,
    password: str | None = None,
) -> dict[str, bytes]:
    """Topic -> payload of each retained message on `127.0.0.1:port` matching `topic`.

    A broker sends the retained messages right after SUBACK: once none has come for
    `quiet_s` they are all in.
    """
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="retained-check", username=username, password=password
    ) as client:
        await client.subscribe(topic, qos=1)
        while True:
            try:
                async with asyncio.timeout(quiet_s):
                    message = await anext(aiter(client.messages))
            except TimeoutError:
                return found
            if message.retain and isinstance(message.payload, bytes):
                found[str(message.topic)] = message.payload
