"""Data: raw text -> clean documents -> token shards on disk."""
