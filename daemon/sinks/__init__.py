"""Where alerts go: Telegram, MQTT, console, JSONL. Every sink speaks `Sink`."""
