"""The webhook bridge: Argo CD sync notifications in, ``<prefix>sync-events`` records out."""
