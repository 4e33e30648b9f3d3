"""Serving: terminal chat (and, later, the OpenAI-compatible HTTP API and the web page)."""
