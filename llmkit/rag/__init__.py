"""Retrieval-augmented answers with citations, and tools the model can call.

    chunking.py   documents (every format `llmkit data clean` reads) -> overlapping chunks with sources
    lexical.py    BM25 (bm25s, the `rag` extra)
    embed.py      dense vectors: the one model's mean-pooled hidden states
    index.py      the index on disk (JSON, JSONL, .npy memory-mapped), incremental add, hybrid search (RRF)
    answer.py     numbered passages + question through the chat template and the one engine; citations
    calculator.py safe arithmetic (Python's ast, bounded sizes)
    tools.py      tool definitions (OpenAI's `tools` form) and the registry of built-in tools
    tool_loop.py  chat with tools: run each call, answer it, let the model continue, bounded rounds
    chat.py       retrieval and tools per conversation turn (`llmkit chat --rag/--tools`, `serve --rag`)
    tool_data.py  tool-use SFT data: arithmetic word problems solved with calculator calls
    cli.py        `llmkit rag index | add | ask`
"""
