"""SGLang-compatible engine emulator: SGLang's HTTP API over the shared cost model, in real time."""
