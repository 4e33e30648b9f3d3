#!/bin/bash
# benchmarks/serve.py against llmkit serve and llama.cpp's servers on the same Q4_1 GGUF, in one invocation.
#
#   LLAMA_SERVER=/path/to/llama-server GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf \
#     bash benchmarks/serve_vs_llamacpp.sh --max-concurrency 1 4 16 64 --request-rate 4 --max-tokens 32
#
# Starts llama-server with 16 and with 64 continuous-batching slots (built from the llama.cpp sources
# vendored in the llama-cpp-python sdist with LLAMA_BUILD_SERVER=ON and AMX off, as BENCHMARKS.md says)
# and llama-cpp-python's own server (serial), then runs benchmarks/serve.py with llmkit fp32 compiled
# and, if $INT4 names a `llmkit quantize --bits 4` checkpoint, llmkit int4. Extra arguments go to serve.py.
set -euo pipefail
: "${LLAMA_SERVER:?set LLAMA_SERVER to the llama-server binary}"
: "${GGUF:?set GGUF to the Q4_1 GGUF file}"
cd "$(dirname "$0")/.."
"$LLAMA_SERVER" -m "$GGUF" -np 16 -c 32768 -t 2 --port 8089 --host 127.0.0.1 > /tmp/llama-server16.log 2>&1 &
pids=($!)
"$LLAMA_SERVER" -m "$GGUF" -np 64 -c 131072 -t 2 --port 8088 --host 127.0.0.1 > /tmp/llama-server64.log 2>&1 &
pids+=($!)
python -m llama_cpp.server --model "$GGUF" --n_threads 2 --n_threads_batch 2 --n_ctx 2048 --port 8090 \
  --host 127.0.0.1 --interrupt_requests False > /tmp/llama-cpp-python-server.log 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:8089/health > /dev/null && curl -sf http://127.0.0.1:8088/health > /dev/null \
    && curl -sf http://127.0.0.1:8090/v1/models > /dev/null && break
  sleep 1
done
llmkit=(--llmkit "smollm2 --compile --max-batch-size 64")
if [ -n "${INT4:-}" ]; then llmkit+=(--llmkit "$INT4 --max-batch-size 64"); fi
python benchmarks/serve.py "${llmkit[@]}" --url llama-server-np16=http://127.0.0.1:8089/v1 \
  --url llama-server-np64=http://127.0.0.1:8088/v1 --url llama-cpp-python=http://127.0.0.1:8090/v1 "$@"
