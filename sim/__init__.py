"""Cost model, discrete-event simulator and workload loaders."""
