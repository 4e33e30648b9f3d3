"""`llmkit serve`'s arguments and handler (llmkit/cli.py adds the verb); the server itself is server.py,
imported only when the verb runs."""

from __future__ import annotations

from collections.abc import Callable

from llmkit.arg_types import float_in, int_in
from llmkit.rag import cli as rag_commands


def add_serve_verb(verbs, add_model_args: Callable, add_engine_args: Callable, engine_from: Callable) -> None:
    # conflict_handler="resolve": the batching options below may also come from add_engine_args one day.
    p = verbs.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, embeddings, /metrics)",
                         conflict_handler="resolve")
    add_model_args(p)
    add_engine_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int_in("[0, 65535]"), default=8000, help="0 picks a free port (the URL is printed)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (except on /health)")
    g.add_argument("--allowed-origins", nargs="+", default=(), metavar="ORIGIN", help="web pages of these origins "
                   "(https://app.example.com, or *) may call the API from a browser (CORS); default: none")
    g.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    g.add_argument("--max-batch-size", type=int, default=32, help="requests decoded together")
    g.add_argument("--kv-cache-mib", type=float, default=2048,
                   help="KV-cache budget of the running requests (llmkit serve allocates it at start-up)")
    g.add_argument("--prefix-cache-mib", type=float, default=256, help="prefix-cache pool (0 = off)")
    g.add_argument("--max-waiting", type=int_in("[0, 2^31)"), default=512, help="requests queued beyond the batch before 429")
    g.add_argument("--max-body-mib", type=float_in("(0, 2^20)"), default=8, help="largest request body (413 beyond)")
    rag_commands.add_chat_rag_args(p, tools=False)
    p.set_defaults(handler=cmd_serve, engine_from=engine_from)  # (cli.py's engine options, read as the verb runs)


def cmd_serve(args) -> None:
    from llmkit.serve.server import serve

    engine_options = args.engine_from(args)
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, served_model_name=args.served_model_name,
          device=args.device, dtype=args.dtype, max_waiting=args.max_waiting, max_body_mib=args.max_body_mib,
          rag=args.rag, rag_k=args.k, rag_mode=args.mode, allowed_origins=args.allowed_origins,
          **engine_options, max_batch_size=args.max_batch_size, kv_cache_mib=args.kv_cache_mib,
          prefix_cache_mib=args.prefix_cache_mib)
