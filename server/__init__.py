"""The qadapter server: model loading, generation engine, HTTP API and the `qadapter` CLI."""
