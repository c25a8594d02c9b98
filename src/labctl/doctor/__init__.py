"""``labctl doctor``: the host, GPUs, container runtime and the lab's own settings, checked.

Each check (:mod:`~labctl.doctor.finding`) reads the machine through one
:class:`~labctl.doctor.host.HostView` (a root for ``/proc``, ``/sys``, ``/dev`` and ``/etc``,
a PATH for the commands it runs, an NVML module, rlimit and statvfs sources), so every check
is tested against fixtures, and returns findings with their evidence and one remedy, or says
why it does not apply.
"""
