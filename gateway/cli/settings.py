"""Where ``gatewayctl`` finds the control plane URL and admin token, and the config file it saves.

Precedence, highest first: the ``--url``/``--token`` flags, the ``GATEWAYCTL_URL`` /
``GATEWAYCTL_TOKEN`` environment variables, the config file. The config file is
``--config`` or ``GATEWAYCTL_CONFIG`` or ``$XDG_CONFIG_HOME/gatewayctl/config.toml``
(``~/.config/gatewayctl/config.toml`` when ``XDG_CONFIG_HOME`` is unset), a TOML table::

    url = "https://cp.example.com:8443"
    token = "..."

It is written by ``gatewayctl login`` with mode 0600 (its directory 0700), atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.errors import CliError, ExitCode

__all__ = ["CONFIG_ENV", "TOKEN_ENV", "URL_ENV", "Settings", "default_config_path", "read_config", "write_config"]

URL_ENV = "GATEWAYCTL_URL"
TOKEN_ENV = "GATEWAYCTL_TOKEN"
CONFIG_ENV = "GATEWAYCTL_CONFIG"


def default_config_path() -> Path:
    """``$GATEWAYCTL_CONFIG``, else ``$XDG_CONFIG_HOME/gatewayctl/config.toml``, else
    ``~/.config/gatewayctl/config.toml``."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".config"
    return root / "gatewayctl" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The ``url`` and ``token`` strings of the config file at ``path`` (``{}`` when it does not exist).

    Raises:
        CliError: (usage) the file cannot be read, is not TOML, or ``url``/``token`` is not a string.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CliError(f"cannot read config file {path}: {e.strerror}", ExitCode.USAGE) from None
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"config file {path} is not valid TOML: {e}", ExitCode.USAGE) from None
    out: dict[str, str] = {}
    for key in ("url", "token"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CliError(f"config file {path}: {key} must be a string", ExitCode.USAGE)
        out[key] = value
    return out


def write_config(path: Path, url: str, token: str) -> None:
    """Write ``url`` and ``token`` to ``path`` (mode 0600, parent directory created 0700), atomically.

    Raises:
        CliError: (usage) the file or its directory cannot be written.
    """
    # json.dumps of a str is a valid TOML basic string: same quotes and escapes (\\uXXXX, \\n, ...).
    text = f"# written by gatewayctl login\nurl = {json.dumps(url)}\ntoken = {json.dumps(token)}\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise CliError(f"cannot write config file {path}: {e.strerror}", ExitCode.USAGE) from None


@dataclass(frozen=True)
class Settings:
    """The resolved connection settings of one ``gatewayctl`` run.

    Attributes:
        url: Control plane base URL (no trailing slash), or None when none was given anywhere.
        token: Admin bearer token, or None. Never printed.
        config_path: The config file consulted (and written by ``login``).
        timeout: Seconds each HTTP request may take.
    """

    url: str | None
    token: str | None
    config_path: Path
    timeout: float

    @classmethod
    def resolve(cls, *, url: str | None, token: str | None, config: Path | None, timeout: float) -> Settings:
        """Apply the precedence flag > environment > config file for ``url`` and ``token``.

        ``url`` and ``token`` are the flag values (None when not given); the environment is
        read here. The config file is read only when a value is still missing.
        """
        path = config.expanduser() if config is not None else default_config_path()
        url = url or os.environ.get(URL_ENV) or None
        token = token or os.environ.get(TOKEN_ENV) or None
        if url is None or token is None:
            saved = read_config(path)
            url = url or saved.get("url") or None
            token = token or saved.get("token") or None
        return cls(url=url.rstrip("/") if url else None, token=token, config_path=path, timeout=timeout)

    def require(self) -> tuple[str, str]:
        """``(url, token)``.

        Raises:
            CliError: (usage) either is missing, naming the flag, variable and file that would give it.
        """
        if not self.url:
            raise CliError(
                f"no control plane URL: pass --url, set {URL_ENV}, or run `gatewayctl login` "
                f"(config file {self.config_path})",
                ExitCode.USAGE,
            )
        if not self.token:
            raise CliError(
                f"no admin token: pass --token, set {TOKEN_ENV}, or run `gatewayctl login` "
                f"(config file {self.config_path})",
                ExitCode.USAGE,
            )
        return self.url, self.token
