"""The live scheduler service: aiohttp front, engine clients and discovery around the sans-IO core."""
