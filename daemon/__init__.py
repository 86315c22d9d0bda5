"""The I/O shell of iwm-alerts: files, feeds, sinks, scheduler, config and the CLI."""
