"""Serving: the OpenAI-compatible HTTP server (server.py, openai_api.py), its web page (web.py) and the terminal chat."""
