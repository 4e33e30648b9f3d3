// The page's calls to this server's OpenAI-compatible API: a streamed chat completion read as
// server-sent events from fetch's body stream (EventSource cannot POST), the model list, the health check,
// and the Inspect view's /v1/inspect/* endpoints.

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// No HTTP answer at all: the server is down or unreachable, or the connection broke mid-reply. fetch says
// so with a TypeError worded differently by each browser; this names the case for the page.
export class NetworkError extends ApiError {}

async function request(url, options) {
  try {
    return await fetch(url, options);
  } catch (e) {
    if (e.name === "AbortError") throw e; // the page's own Stop
    throw new NetworkError("the server could not be reached");
  }
}

function headers(apiKey, json = false) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  if (apiKey) out.Authorization = `Bearer ${apiKey}`;
  return out;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(message, response.status);
}

export async function health() {
  const response = await request("/health", { cache: "no-store" });
  return response.status;
}

export async function listModels(apiKey) {
  const response = await request("/v1/models", { headers: headers(apiKey), cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  return (await response.json()).data.map((m) => m.id);
}

// Yields each chunk object of POST /v1/chat/completions with stream: true, until `data: [DONE]`.
// An error the server reports inside the stream (after the 200 went out) is thrown as ApiError;
// aborting `signal` makes fetch close the connection, and the server cancels the request.
export async function* streamChat(body, { apiKey, signal }) {
  const response = await request("/v1/chat/completions", {
    method: "POST", headers: headers(apiKey, true), body: JSON.stringify({ ...body, stream: true }), signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = ""; // text after the last line break
  let data = []; // the data lines of the event being read
  for (;;) {
    let value, done;
    try {
      ({ value, done } = await reader.read());
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new NetworkError("the connection to the server was lost before the reply was complete");
    }
    if (done) break;
    pending += value;
    const lines = pending.split(/\r\n|\r|\n/);
    pending = lines.pop();
    for (const line of lines) {
      if (line === "") { // a blank line ends an event
        if (!data.length) continue;
        const text = data.join("\n");
        data = [];
        if (text === "[DONE]") return;
        const event = JSON.parse(text);
        if (event.error) throw new ApiError(event.error.message || "the server reported an error");
        yield event;
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } // other fields (event:, id:, comments) are not used by this API
    }
  }
  throw new ApiError("the connection closed before the reply was complete");
}

// POST /v1/inspect/{kind} (attention | lens | next_token): the reply's JSON, or an ApiError with the
// server's message (a text too long, a token that is not in it...).
export async function inspect(kind, body, apiKey) {
  const response = await request(`/v1/inspect/${kind}`, {
    method: "POST", headers: headers(apiKey, true), body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
