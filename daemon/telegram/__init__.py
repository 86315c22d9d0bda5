"""Telegram: the subscriber store, the alert sink and the embedded command bot.

- `subscribers`: chats, their filters and per-alert delivery records (SQLite, WAL);
- `sink`: `TelegramSink`, the `Sink` that fans an alert out to subscribers;
- `bot`: `TelegramBot`, python-telegram-bot running inside our event loop;
- `start`: reaching the Bot API at start-up, `TelegramStartError` / `TelegramAuthError`;
- `menu`: the command menu, published in the background until it sticks;
- `commands`, `replies`, `chart`: what the bot answers; `backend`: what it reads;
- `ratelimit`: per-chat and global send pacing.
"""
