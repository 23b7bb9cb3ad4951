"""Launchers: one interface (``base.Launcher``), two implementations (local cluster, Slurm)."""
