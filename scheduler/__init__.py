"""SBS scheduler: the sans-IO scheduling core (`core`) and the aiohttp service around it (`service`)."""
