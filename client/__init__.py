"""Python client for a qadapter server (depends on httpx only; arrives with the client issue)."""
