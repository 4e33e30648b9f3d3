"""The Inspect view's endpoints: a text's attention weights, its logit lens and the next-token
probabilities after it, computed by `llmkit.inspect`'s own functions, so the numbers are the ones
`llm.attention`, `llm.lens` and `llmkit inspect` give for the same tokens.

    POST /v1/inspect/attention   {"text": "The cat ate", "token": -1, "layer": 15, "head": null}
    POST /v1/inspect/lens        {"text": "The cat ate", "top": 5}
    POST /v1/inspect/next_token  {"text": "The cat ate", "top": 10}

The input is "text" (with the BOS token in front, as `llmkit inspect` encodes it; "add_bos": false
leaves it out) or "messages": a conversation rendered by the chat template without a generation
prompt, i.e. the tokens the model read and wrote up to its last reply ("add_generation_prompt": true
adds the prompt of the next reply). Each input is bounded (MAX_TOKENS tokens, and the model's context):
the attention of every layer and head is tokens^2 numbers, and the lens runs the output head once per
layer and token.

The model runs on the engine thread between two engine steps (`EngineWorker.call`), as embeddings and
prompt log-probabilities do: never on the event loop, never beside a step. Turning the tensors into
JSON happens in a worker thread, off both.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response

from llmkit.errors import LLMKitError
from llmkit.inspect import InspectError
from llmkit.inspect.attention import AttentionMaps, attention_maps_of_ids, token_position
from llmkit.inspect.lens import LensResult, NextToken, logit_lens_of_ids, next_token_of_ids
from llmkit.serve.protocol import APIError, _boolean, _integer, _string, bad, parse_chat

MAX_TOKENS = 256  # 30 layers x 9 heads x 256 x 256 weights for SmolLM2 stay a few MB in the reply
MAX_TEXT_CHARS = 16_000  # checked before tokenizing: a longer text cannot fit MAX_TOKENS anyway in practice
MAX_LENS_TOP = 20
MAX_NEXT_TOP = 50


def json_response(payload: dict) -> Response:
    """The body as Starlette's JSONResponse writes it."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    return Response(text.encode("utf-8"), media_type="application/json")


class InspectService:
    def __init__(self, service):
        """service: the server's OpenAIService (its worker, model name and loaded LLM)."""
        self.service = service

    @property
    def worker(self):
        return self.service.worker

    async def _input(self, request: Request) -> tuple[dict, list[int]]:
        """The request body and the token ids to look at."""
        service = self.service
        body = await service.body(request)
        service.check_model(_string(body, "model"))
        tokenizer = service.tokenizer
        has_text, has_messages = body.get("text") is not None, body.get("messages") is not None
        if has_text == has_messages:
            raise bad("text", "give the text to look inside the model with as \"text\" (a string) or "
                      "\"messages\" (a conversation), one of them", "invalid_type")
        if has_text:
            text = _string(body, "text")
            if not text.strip():
                raise bad("text", "is empty; give some text to look inside the model with")
            self._check_chars(len(text), "text")
            ids = tokenizer.encode(text, add_bos=_boolean(body, "add_bos", True))
            param = "text"
        else:
            messages = parse_chat({"messages": body["messages"]}).messages
            self._check_chars(sum(len(m["content"]) for m in messages), "messages")
            try:
                ids = tokenizer.encode_chat(messages, add_generation_prompt=_boolean(body, "add_generation_prompt", False))
            except LLMKitError as e:
                raise bad("messages", str(e)) from None
            param = "messages"
        limit = min(MAX_TOKENS, service.context)
        if len(ids) > limit:
            raise APIError(400, f"{param}: has {len(ids)} tokens, but the inspect endpoints take at most {limit} "
                           "(the attention of every layer and head grows with its square); give a shorter text",
                           param=param, code="text_too_long")
        if not ids:
            raise bad(param, "has no tokens; give some text to look inside the model with")
        return body, ids

    @staticmethod
    def _check_chars(n: int, param: str) -> None:
        if n > MAX_TEXT_CHARS:
            raise APIError(400, f"{param}: has {n} characters, but the inspect endpoints take at most {MAX_TEXT_CHARS} "
                           f"(and {MAX_TOKENS} tokens); give a shorter text", param=param, code="text_too_long")

    async def _run(self, fn, *args):
        llm = self.service.llm
        return await self.worker.call(fn, llm.model, llm.tokenizer, *args)

    async def _reply(self, build, *args) -> Response:
        return json_response(await asyncio.to_thread(build, *args))

    def _envelope(self, kind: str, ids: list[int], **fields) -> dict:
        return {"object": f"inspect.{kind}", "model": self.service.model_name, "token_ids": ids, **fields}

    # -- POST /v1/inspect/attention
    async def attention(self, request: Request):
        body, ids = await self._input(request)
        config = self.service.llm.model.config
        layer = _integer(body, "layer", config.n_layers // 2, 0, config.n_layers - 1)
        head = _integer(body, "head", None, 0, config.n_heads - 1)
        spec = body.get("token")
        if spec is not None and (isinstance(spec, bool) or not isinstance(spec, (int, str))):
            raise bad("token", f"must be a token index or one of the text's words, not {json.dumps(spec)}",
                      "invalid_type")
        maps = await self._run(attention_maps_of_ids, ids)
        try:
            position = token_position(maps.tokens, spec)
        except InspectError as e:
            raise bad("token", str(e).removeprefix("--token ")) from None
        return await self._reply(self._attention_body, maps, ids, position, layer, head)

    def _attention_body(self, maps: AttentionMaps, ids: list[int], position: int, layer: int, head: int | None) -> dict:
        """The chosen token's attention in every layer (per head and the mean over heads, what
        `llmkit inspect attention` tabulates) and one layer's whole matrix (head or mean) for the heatmap;
        row r of the matrix holds the weights of token r over tokens 0..r."""
        return self._envelope(
            "attention", ids, tokens=maps.tokens, n_layers=maps.n_layers, n_heads=maps.n_heads,
            token=position, layer=layer, head=head,
            heads=[[maps.row(position, lay, h).tolist() for h in range(maps.n_heads)] for lay in range(maps.n_layers)],
            mean=[maps.row(position, lay).tolist() for lay in range(maps.n_layers)],
            matrix=[maps.row(r, layer, head).tolist() for r in range(len(maps.tokens))])

    # -- POST /v1/inspect/lens
    async def lens(self, request: Request):
        body, ids = await self._input(request)
        top = _integer(body, "top", 5, 1, MAX_LENS_TOP)
        result = await self._run(logit_lens_of_ids, ids, top)
        return await self._reply(self._lens_body, result, ids)

    def _lens_body(self, result: LensResult, ids: list[int]) -> dict:
        """Row 0 reads the embeddings, row i the residual stream after block i (the last row is the
        model's own prediction); column j is the next token predicted after token j."""
        return self._envelope("lens", ids, tokens=result.tokens, positions=result.positions,
                              n_layers=result.n_rows - 1, top_ids=result.top_ids.tolist(),
                              top_texts=result.top_texts, top_probs=result.top_probs.tolist())

    # -- POST /v1/inspect/next_token
    async def next_token(self, request: Request):
        body, ids = await self._input(request)
        top = _integer(body, "top", 10, 1, MAX_NEXT_TOP)
        result = await self._run(next_token_of_ids, ids, top)
        return await self._reply(self._next_token_body, result, ids)

    def _next_token_body(self, result: NextToken, ids: list[int]) -> dict:
        return self._envelope("next_token", ids, **result.to_dict())
