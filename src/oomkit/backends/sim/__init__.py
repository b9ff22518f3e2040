"""The simulated kernel: deterministic, no root needed (public and supported)."""

from oomkit.backends.sim.backend import SimBackend
from oomkit.backends.sim.machine import Machine, SimTask
from oomkit.backends.sim.simulator import Simulator, simulate
from oomkit.schema import SimResult

__all__ = ["Machine", "SimBackend", "SimResult", "SimTask", "Simulator", "simulate"]
