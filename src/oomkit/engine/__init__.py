"""The engine: the handler chain, the release actions and the OOM record."""

from oomkit.engine.chain import Attachment, Engine, EngineSettings
from oomkit.engine.clock import Clock, ManualClock, MonotonicClock
from oomkit.schema import OOMRecord

__all__ = ["Attachment", "Clock", "Engine", "EngineSettings", "ManualClock", "MonotonicClock",
           "OOMRecord"]
