"""Training jobs at run time: DiLoCo rounds closed by the coordinator, results audited by replay."""
