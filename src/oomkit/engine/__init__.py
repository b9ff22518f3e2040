"""The engine: the handler chain, the release actions and the OOM record."""

from oomkit.engine.attachment import Attachment
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.engine.clock import Clock, ManualClock, MonotonicClock
from oomkit.schema import OOMRecord

__all__ = ["Attachment", "Clock", "Engine", "EngineSettings", "ManualClock", "MonotonicClock",
           "OOMRecord"]
