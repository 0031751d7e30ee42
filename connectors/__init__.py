"""synctrail connectors: everything that touches the outside world."""
