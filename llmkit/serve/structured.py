"""Structured output for the API: `response_format` and forced tool calls compiled into a grammar that the
engine's sampler enforces (llmkit/infer/grammar.py).

The grammar compiler (llguidance's token trie over the served tokenizer) is built on first use, not at
start-up. Compiling runs off the event loop (a large schema takes tens of milliseconds); compiled
grammars are kept in a small LRU cache, since clients tend to send the same schema again and again.
A schema llguidance cannot compile is a 400 naming `response_format` (or `tools`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict

from llmkit.errors import GenerationError
from llmkit.serve.protocol import APIError, ResponseFormat, bad
from llmkit.serve.tools import check_tools, forced_call_lark, tag_lark
from llmkit.tool_calls import CLOSE, OPEN

CACHED_GRAMMARS = 64


class Grammars:
    def __init__(self, llm):
        self.llm = llm
        self._compiler = None
        self._lock = threading.Lock()  # compiles run on worker threads
        self._cache: OrderedDict[str, object] = OrderedDict()

    def compiler(self):
        with self._lock:
            if self._compiler is None:
                from llmkit.infer.grammar import GrammarCompiler

                self._compiler = GrammarCompiler(self.llm.tokenizer, self.llm.model.config.vocab_size,
                                                 self.llm.engine.stop_token_ids)
            return self._compiler

    async def for_request(self, response_format: ResponseFormat | None, tools: list[dict] = (),
                          tool_choice="none"):
        """The grammar a request's output must follow, or None. Refuses tools whose calls could not be read."""
        check_tools(tools)
        if response_format is None and tool_choice in ("none", "auto"):
            return None
        return await asyncio.to_thread(self._compile, response_format, list(tools), tool_choice)

    def _compile(self, response_format: ResponseFormat | None, tools: list[dict], tool_choice):
        compiler = self.compiler()
        if response_format is not None:
            param = "response_format"
            key = json.dumps([response_format.type, response_format.schema], sort_keys=True)
            if response_format.type == "json_object":
                build = compiler.json_object
            else:
                def build():
                    return compiler.json_schema(response_format.schema, "json_schema.schema")
        else:
            param = "tools"
            lark = forced_call_lark(tools, tool_choice, tag_lark(compiler, OPEN), tag_lark(compiler, CLOSE))
            key = "lark:" + lark

            def build():
                # Each forced function's schema alone first: a 400 then names the tool at fault (and one
                # that admits no arguments at all is found here, not part-way through a call).
                for i, tool in enumerate(tools):
                    if tool_choice == "required" or tool["name"] == tool_choice["name"]:
                        try:
                            compiler.json_schema(tool["parameters"], "its schema")
                        except Exception as e:  # noqa: BLE001 - llguidance raises plain errors
                            raise bad(f"tools[{i}].function.parameters", str(e)) from None
                return compiler.lark(lark, "the tool call grammar (tools[].function.parameters)")
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            grammar = build()
        except APIError:
            raise
        except GenerationError as e:
            raise bad(param, str(e)) from None
        except Exception as e:  # noqa: BLE001 - llguidance raises plain errors for inputs it rejects
            raise APIError(400, f"{param}: cannot be compiled: {e}", param=param, code="invalid_value") from None
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return grammar

