"""Cluster mode on Ray Serve: engine replicas behind the same FastAPI app, routed by adapter affinity,
all reading one shared adapter store (docs/deploy.md, "Cluster mode")."""
