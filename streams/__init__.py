"""synctrail stream processing: the domain (pure functions) and the Faust app."""
