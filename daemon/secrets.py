"""Secrets: read from systemd credentials or the environment, never from the config file.

A `Secret` wraps the value so that it prints as `***` wherever it ends up by
accident (a log field, an f-string, an exception message); code that really
needs the value calls `.reveal()` at the one place it hands it to a client.

Lookup order for a name such as `TELEGRAM_BOT_TOKEN`: the file
`$CREDENTIALS_DIRECTORY/TELEGRAM_BOT_TOKEN` (systemd `LoadCredential=`), then
the environment variable of the same name. An empty value counts as unset.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NoReturn

from daemon.feeds.registry import FEEDS

if TYPE_CHECKING:
    from daemon.config import Config

TELEGRAM_BOT_TOKEN = "TELEGRAM_BOT_TOKEN"
MQTT_PASSWORD = "MQTT_PASSWORD"


class _ProviderSecrets(Mapping[str, tuple[str, ...]]):
    """What each feed provider authenticates with, read from the feed registry when asked."""

    def __getitem__(self, provider: str) -> tuple[str, ...]:
        return FEEDS[provider].secrets

    def __iter__(self) -> Iterator[str]:
        return iter(FEEDS)

    def __len__(self) -> int:
        return len(FEEDS)


PROVIDER_SECRETS: Mapping[str, tuple[str, ...]] = _ProviderSecrets()

# Every secret the daemon knows: the built-in feed providers' and the sinks'.
SECRET_NAMES: tuple[str, ...] = (
    *dict.fromkeys(name for names in PROVIDER_SECRETS.values() for name in names),
    TELEGRAM_BOT_TOKEN,
    MQTT_PASSWORD,
)

# A Telegram bot token (`<bot id>:<secret>`): refused in the config, redacted in logs.
TELEGRAM_TOKEN_SHAPE = re.compile(r"\d{6,12}:[A-Za-z0-9_-]{30,}")

# Names double as file names under $CREDENTIALS_DIRECTORY: no path separators.
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class SecretError(ValueError):
    """A secret is missing or unreadable. The message names it, never its value."""


class Secret:
    """A string that prints as `***`; `.reveal()` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value, for the one call that hands it to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, format_spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        # Pickling would write the value to wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: object) -> Secret:
        return self


def load_secret(
    name: str,
    env: Mapping[str, str] | None = None,
    credentials_dir: Path | None = None,
) -> Secret | None:
    """The secret `name` from `credentials_dir` (default `$CREDENTIALS_DIRECTORY`), else `env`.

    `env` defaults to `os.environ`. A credential file loses its trailing
    newline. Returns None when neither has a non-empty value; raises
    `SecretError` when a credential file exists but cannot be read.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a secret name: {name!r} (expected upper case, digits, _)")
    environ = os.environ if env is None else env
    if credentials_dir is None and environ.get("CREDENTIALS_DIRECTORY"):
        credentials_dir = Path(environ["CREDENTIALS_DIRECTORY"])
    if credentials_dir is not None:
        path = credentials_dir / name
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            value = ""
        except UnicodeDecodeError:
            # `from None`: the decode error carries the raw bytes.
            raise SecretError(f"{name}: credential file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise SecretError(
                f"{name}: cannot read credential file {path}: {exc.strerror}"
            ) from exc
        if value:
            return Secret(value)
    value = environ.get(name, "")
    return Secret(value) if value else None


def _needs(config: Config) -> list[tuple[str, str]]:
    """Each secret `config` needs, with the setting that needs it."""
    provider = config.feed.provider
    needs = [(name, f'feed.provider = "{provider}"') for name in PROVIDER_SECRETS[provider]]
    if config.sinks.telegram is not None:
        needs.append((TELEGRAM_BOT_TOKEN, "[sinks.telegram]"))
    # A broker that knows the user name wants its password; without a user
    # name the client connects anonymously or by TLS client certificate.
    if config.sinks.mqtt is not None and config.sinks.mqtt.username is not None:
        needs.append((MQTT_PASSWORD, "sinks.mqtt.username"))
    return needs


def required_secrets(config: Config) -> list[str]:
    """The secret names the configured feed provider and sinks need, in a stable order."""
    return [name for name, _ in _needs(config)]


@dataclass(frozen=True)
class Secrets:
    """Every secret found at start-up, by name. Build it with `Secrets.load`."""

    values: Mapping[str, Secret]

    @classmethod
    def load(
        cls,
        config: Config,
        env: Mapping[str, str] | None = None,
        credentials_dir: Path | None = None,
    ) -> Secrets:
        """Load every known secret that is set; `SecretError` naming each one `config` needs but lacks."""
        values: dict[str, Secret] = {}
        needs = _needs(config)
        for name in dict.fromkeys([*SECRET_NAMES, *(name for name, _ in needs)]):
            secret = load_secret(name, env, credentials_dir)
            if secret is not None:
                values[name] = secret
        missing = [f"{name} (for {why})" for name, why in needs if name not in values]
        if missing:
            raise SecretError(
                f"missing secret {', '.join(missing)}: set it as an environment variable "
                "or a systemd credential (LoadCredential=NAME:/path/to/file)"
            )
        return cls(MappingProxyType(values))

    def get(self, name: str) -> Secret | None:
        """The secret `name`, or None when it is not set."""
        return self.values.get(name)

    def require(self, name: str) -> Secret:
        """The secret `name`; `SecretError` naming it when it is not set."""
        secret = self.values.get(name)
        if secret is None:
            raise SecretError(
                f"missing secret {name}: set it as an environment variable "
                "or a systemd credential (LoadCredential=NAME:/path/to/file)"
            )
        return secret

    def all(self) -> tuple[Secret, ...]:
        """Every loaded secret, to register with the log redactor."""
        return tuple(self.values.values())
