"""The HTTP layer: OpenAI-compatible routes, errors, metrics (thin routes over server.api.serving)."""
