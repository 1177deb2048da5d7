"""Cost model, engine models, discrete-event simulator, workload loaders and the engine emulator."""
