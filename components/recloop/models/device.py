"""Which torch device a config's `device: auto | cpu | cuda` means on this machine."""

from __future__ import annotations

from recloop.errors import ConfigError


def select_device(requested: str, source: str, key: str = "device") -> str:
    """'cuda' when `requested` is 'auto' and a CUDA device is available, else 'cpu'; an explicit choice as
    given. `source` and `key` name the config entry in the error when 'cuda' is asked for but absent."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(source, [f"{key}: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"])
    return requested
