"""Backends: the simulated kernel, cgroup v1 and cgroup v2, behind one interface
(:class:`oomkit.backends.base.Backend`)."""
