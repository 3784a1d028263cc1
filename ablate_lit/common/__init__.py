"""What every stage shares and no stage owns: one-line errors, logging and progress, typed labels of
points and methods, the family registry, the loggers of curves, signals, resources, sharding."""
