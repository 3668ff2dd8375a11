"""Configuration: defaults, presets, dotted `key=value` overrides, and the keyword checks against classes."""

from fedinvert.config.schema import (
    DEFAULTS,
    GROUPS,
    class_keywords,
    load_preset,
    preset_names,
    resolve_config,
    resolve_keywords,
)

__all__ = [
    "DEFAULTS",
    "GROUPS",
    "class_keywords",
    "load_preset",
    "preset_names",
    "resolve_config",
    "resolve_keywords",
]
