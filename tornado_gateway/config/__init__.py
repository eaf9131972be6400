"""Configuration: the option table (options), its sources (sources) and the result (settings)."""

from tornado_gateway.config.options import _OPTIONS, SECRET_OPTIONS, ConfigError
from tornado_gateway.config.settings import (SERVICES, RateLimit, Route, Settings, build_settings,
                                             check_production, secret_values, startup_warnings,
                                             weak_secret)
from tornado_gateway.config.sources import load, make_parser, parse_flags, raw_values, validated

__all__ = ["_OPTIONS", "SECRET_OPTIONS", "ConfigError", "SERVICES", "RateLimit", "Route", "Settings",
           "build_settings", "check_production", "secret_values", "startup_warnings", "weak_secret", "load",
           "make_parser", "parse_flags", "raw_values", "validated"]
