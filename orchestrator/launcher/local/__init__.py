"""The local backend: simulated nodes as warm node-agent processes on this host (``launcher``), built by
``plugin.make_launcher`` when ``cluster.backend`` is ``local``."""
