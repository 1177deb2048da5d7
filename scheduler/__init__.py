"""SBS scheduler: the sans-IO scheduling core (`core`) and, later, the aiohttp service."""
