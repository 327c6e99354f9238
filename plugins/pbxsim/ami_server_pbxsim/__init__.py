"""A simulated PBX for ami-server: a sans-IO core plus a thin plugin layer.

``config`` parses the ``[plugins.pbxsim]`` table, ``channels`` holds the
channel and bridge records, ``core`` runs calls on an injected clock,
``traffic`` generates load, and ``plugin`` maps all of it onto AMI actions
and events through ami-server's public API only.
"""

from .config import ConfigError, SimConfig, parse_config
from .core import Simulator

__all__ = ["ConfigError", "SimConfig", "Simulator", "parse_config"]
