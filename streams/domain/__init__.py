"""synctrail's domain: pure functions over plain data (images, state, diff, decide, policy,
routing, rendering, records). Imports neither Faust nor aiokafka nor aiohttp."""
