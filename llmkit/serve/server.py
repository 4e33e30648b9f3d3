"""`llmkit serve`: the OpenAI-compatible HTTP server (Starlette on uvicorn) over the one engine.

    llmkit serve --model smollm2 --port 8000
    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]}'

The socket is bound first and the URL printed; the model loads on the engine thread meanwhile, and
`/health` answers 503 until it is ready, then 200. Cross-cutting rules are pure ASGI middleware (no
per-request task or body buffering): a bounded request body (413) and, with `--api-key`, a bearer
key on everything but `/health` and the web chat page (401). Every error is OpenAI's error body.
The page (web.py) is served at `/` by the same process; its Inspect view reads /v1/inspect/*
(inspect_api.py).
"""

from __future__ import annotations

import functools
import hmac
import re
import socket
import traceback
from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from llmkit.errors import LLMKitError
from llmkit.serve.inspect_api import InspectService
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.openai_api import ClientGone, OpenAIService
from llmkit.serve.protocol import APIError
from llmkit.serve.web import STATIC_PREFIX, web_routes
from llmkit.serve.worker import EngineWorker


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def endpoint(handler: Callable, metrics: ServerMetrics | None = None) -> Callable:
    """Every way a handler can fail becomes OpenAI's error body: an APIError as it is, a user error
    from the package (LLMKitError) as 400, anything else as 500 with the traceback in the server log."""
    @functools.wraps(handler)
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except APIError as e:
            return error_response(e)
        except ClientGone:  # nobody to answer: nginx's "client closed request"
            if metrics is not None:
                metrics.count_abandoned()
            return Response(status_code=499)
        except LLMKitError as e:
            return error_response(APIError(400, str(e)))
        except Exception:  # noqa: BLE001 - the server keeps serving; the log has the details
            traceback.print_exc()
            return error_response(APIError(500, "internal server error (see the server log)"))

    return wrapped


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the server's limit of {limit} bytes",
                         code="request_too_large")


class LimitBody:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it is being read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(BodyTooLarge(self.max_bytes))(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, limited_receive, send)


class RequireKey:
    """401 unless `Authorization: Bearer KEY` (OpenAI's clients send it). `open_paths` and paths under
    `open_prefixes` stay open: /health for probes, and the web page with its assets, which hold no data
    and ask for the key themselves."""

    def __init__(self, app, key: str, open_paths: frozenset[str] = frozenset({"/health", "/"}),
                 open_prefixes: tuple[str, ...] = (STATIC_PREFIX,)):
        self.app, self.key = app, key.encode()
        self.open_paths, self.open_prefixes = open_paths, open_prefixes

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.is_open(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = APIError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", type="authentication_error",
                                 headers={"WWW-Authenticate": "Bearer"})
                return await error_response(error)(scope, receive, send)
        return await self.app(scope, receive, send)


def build_app(service: OpenAIService, metrics: ServerMetrics, api_key: str | None = None,
              max_body_bytes: int = 8 << 20, allowed_origins: Sequence[str] = ()):
    worker = service.worker
    inspect = InspectService(service)

    async def health(request: Request):
        if worker.llm is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request):
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException):
        what = "no such endpoint" if exc.status_code == 404 else exc.detail
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {what}",
                                       code="not_found" if exc.status_code == 404 else None,
                                       headers=dict(exc.headers or {})))  # a 405's Allow

    post, get = ["POST"], ["GET"]
    routes = [
        Route("/v1/chat/completions", endpoint(service.chat_completions), methods=post),
        Route("/v1/completions", endpoint(service.completions, metrics), methods=post),
        Route("/v1/embeddings", endpoint(service.embeddings, metrics), methods=post),
        Route("/v1/models", endpoint(service.models), methods=get),
        Route("/v1/models/{model:path}", endpoint(service.model), methods=get),  # ids may hold a "/"
        Route("/tokenize", endpoint(service.tokenize), methods=post),
        Route("/detokenize", endpoint(service.detokenize), methods=post),
        Route("/tokenizer_info", endpoint(service.tokenizer_info), methods=get),
        Route("/v1/inspect/attention", endpoint(inspect.attention), methods=post),
        Route("/v1/inspect/lens", endpoint(inspect.lens), methods=post),
        Route("/v1/inspect/next_token", endpoint(inspect.next_token), methods=post),
        Route("/health", health, methods=get),
        Route("/metrics", prometheus, methods=get),
        *web_routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app = LimitBody(app, max_body_bytes)
    app = RequireKey(app, api_key) if api_key else app
    return with_cors(app, allowed_origins) if allowed_origins else app


def with_cors(app, origins: Sequence[str]):
    """Cross-origin requests from web pages of `origins` (--allowed-origins): Starlette's CORS middleware,
    outside the key check, since a browser's preflight (OPTIONS) carries no Authorization header. Off by
    default, unlike vLLM's and llama.cpp's servers (which allow every origin): with it on for "*", any page a
    user visits could use a server on their machine, and read its replies."""
    from starlette.middleware.cors import CORSMiddleware

    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise LLMKitError(f"--allowed-origins {origin!r}: an origin is a scheme and a host, such as "
                              "https://app.example.com or http://localhost:3000 (no path), or * for any")
    return CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "POST"], allow_headers=["*"],
                          expose_headers=["*"], max_age=600)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LLMKitError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    return sock


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, device: str | None = None, dtype: str | None = None,
          max_waiting: int = 512, max_body_mib: float = 8, rag: str | None = None, rag_k: int = 5,
          rag_mode: str | None = None, allowed_origins: Sequence[str] = (), **engine_options) -> None:
    """Run the server until interrupted. engine_options go to `llmkit.load` (compile, speculative,
    max_batch_size, kv_cache_mib, kv_cache_dtype, prefix_cache_mib, prefill_chunk, draft_tokens). rag: a retrieval index
    that chat completions answer from (rag_k passages, rag_mode search; serve/retrieval.py)."""
    import uvicorn

    import llmkit

    if max_waiting < 0:
        raise LLMKitError(f"--max-waiting must be >= 0, not {max_waiting}")
    sock = bind(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"

    def load():
        llm = llmkit.load(model, device=device, dtype=dtype, **engine_options)
        if rag is not None:
            from llmkit.rag.cli import make_retriever

            service.retriever = make_retriever(rag, rag_k, rag_mode, model, llm, device, dtype)
        # a compiled step's compilations happen now, not in the first clients' requests
        if engine_options.get("compile") and llm.model.config.causal:
            from llmkit.infer.compiled import warm_up

            print(f"llmkit serve: compiling the decode step ({warm_up(llm.engine):.0f} s)", flush=True)
        if llm.model.config.causal:  # after warm_up, whose small caches made the compiled shapes symbolic
            rows, positions = llm.engine.reserve_cache()
            if rows:
                kind = str(llm.engine.scheduler.dtype).removeprefix("torch.")
                print(f"llmkit serve: KV cache of {rows} rows x {positions} positions, {kind} "
                      f"({llm.engine.scheduler.memory_in_use / 2**20:,.0f} MiB, --kv-cache-mib)", flush=True)
        print(f"llmkit serve: {model} loaded; ready at {url}/v1", flush=True)
        return llm

    metrics = ServerMetrics()
    worker = EngineWorker(load, metrics, engine_options.get("max_batch_size", 32), max_waiting)
    service = OpenAIService(worker, served_model_name or model)
    app = build_app(service, metrics, api_key, int(max_body_mib * 2**20), allowed_origins)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=3))
    worker.on_load_failure = lambda: setattr(server, "should_exit", True)
    print(f"llmkit serve: listening on {url} (chat page at {url}/, OpenAI API at {url}/v1; /health answers 200 "
          "once the model is loaded)", flush=True)
    worker.start()
    try:
        server.run(sockets=[sock])
    finally:
        worker.stop()
        sock.close()
    if worker.load_error is not None:
        if isinstance(worker.load_error, (LLMKitError, KeyboardInterrupt)):
            raise worker.load_error
        raise LLMKitError(f"the model could not be loaded: {worker.load_error!r}") from worker.load_error
