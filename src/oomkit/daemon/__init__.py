"""The live daemon (``oomkit run``): the engine on real cgroups, its event
sources, its event log and its watchdog."""
