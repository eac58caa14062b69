"""The HTTP API: OpenAI-compatible completions for gen runs, /v1/predict for every task, health and readiness.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with one clear message; a bad
request never stops the server. Every route but /health needs ``Authorization: Bearer KEY`` when a key is set."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from ftkit.errors import UsageError, first_line
from ftkit.serve.batcher import Batcher, Overloaded
from ftkit.serve.generate import GenRequest
from ftkit.serve.pool import Served, Text

MAX_INPUTS = 256  # texts in one /v1/predict request
MAX_STOPS = 4  # as OpenAI's API
UNBOUNDED_MAX_TOKENS = 4096  # the most new tokens a model with no position limit is asked for at once


@dataclass
class State:
    served: dict[str, Served]
    batcher: Batcher | None = None
    api_key: str | None = None
    max_input_chars: int = 100_000
    ready: bool = False
    log: Callable[[str], None] = print
    started: int = field(default_factory=lambda: int(time.time()))


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers


def error_response(status: int, message: str, *, param=None, code=None, kind="invalid_request_error",
                   headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# ---------------------------------------------------------------- request bodies
class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart]]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    n: int = 1
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]


class PredictRequest(BaseModel):
    model: Optional[str] = None
    input: Union[str, list[str]]


# ---------------------------------------------------------------- the app
def build_app(state: State, lifespan=None) -> FastAPI:
    app = FastAPI(title="ftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ftkit = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, param=e.param, code=e.code, kind=e.kind, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON ({err.get('msg')})", code="invalid_json")
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        return error_response(400, f"{param or 'body'}: {err.get('msg')}", param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        state.log(f"error: {request.method} {request.url.path}: {type(e).__name__}: {first_line(e)}")
        return error_response(500, f"internal error: {first_line(e)}", kind="server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ready", "models": list(state.served)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": state.started, "owned_by": "ftkit", "task": s.task.name,
             "root": str(s.target.path), "shares_base_with": s.shares_with} for s in state.served.values()]}

    @app.post("/v1/predict")
    async def predict(body: PredictRequest):
        s = _pick(state, body.model, None, "/v1/predict")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(400, "input: an empty list; give one text or a list of texts", param="input")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input: {len(texts)} texts; at most {MAX_INPUTS} per request", param="input")
        items = [Text(t, "input" if isinstance(body.input, str) else f"input.{i}") for i, t in enumerate(texts)]
        for item in items:
            _check_text(state, item.text, item.where)
        rows = await _run(state, s, items)
        return {"object": "list", "model": s.name, "data": rows}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        s = _pick(state, body.model, "gen", "/v1/chat/completions")
        messages = [m.as_dict() for m in body.messages]
        if not any(m["content"].strip() for m in messages):
            raise ApiError(400, "messages: every message is empty", param="messages")
        for i, m in enumerate(messages):
            _check_text(state, m["content"], f"messages.{i}.content", empty_ok=True)
        text, chat_rendered = s.task.chat_prompt(s.loaded.tokenizer, messages, s.cfg)
        ids = s.loaded.tokenizer(text, add_special_tokens=not chat_rendered)["input_ids"]
        req = _gen_request(s, body, ids, body.max_completion_tokens or body.max_tokens, "messages")
        return await _answer(state, s, body, req, "chat.completion")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        s = _pick(state, body.model, "gen", "/v1/completions")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, f"prompt: a list of {len(prompt)} prompts; this server takes one per request",
                               param="prompt")
            prompt = prompt[0]
        _check_text(state, prompt, "prompt")
        ids = s.loaded.tokenizer(prompt)["input_ids"]
        req = _gen_request(s, body, ids, body.max_tokens, "prompt")
        return await _answer(state, s, body, req, "text_completion")

    return app


def _pick(state: State, name: str | None, task: str | None, route: str) -> Served:
    """The served model a request names (or the only one that fits the route), ready to answer."""
    if not state.ready:
        raise ApiError(503, "the models are still loading; retry shortly (GET /ready says when)",
                       kind="server_error", headers={"Retry-After": "5"})
    fits = [s for s in state.served.values() if task is None or s.task.name == task]
    if name is None:
        if len(fits) == 1:
            return fits[0]
        raise ApiError(400, f"model: required (served here: {', '.join(state.served)})", param="model")
    s = state.served.get(name)
    if s is None:
        raise ApiError(404, f"model {name!r} is not served here (served: {', '.join(state.served)})", param="model",
                       code="model_not_found")
    if task is not None and s.task.name != task:
        raise ApiError(400, f"model {name!r} is a {s.task.name} model; {route} needs a gen model (use "
                            "POST /v1/predict)", param="model")
    return s


def _check_text(state: State, text: str, where: str, empty_ok: bool = False) -> None:
    if not empty_ok and not text.strip():
        raise ApiError(400, f"{where}: empty text", param=where)
    if len(text) > state.max_input_chars:
        raise ApiError(400, f"{where}: {len(text):,} characters; at most {state.max_input_chars:,} "
                            "(--max-input-chars)", param=where, code="input_too_long")


def _gen_request(s: Served, body: Sampling, ids: list[int], max_tokens: int | None, prompt: str) -> GenRequest:
    """``prompt``: the request field the prompt came from (messages, prompt), for errors about its length."""
    if body.n != 1:
        raise ApiError(400, f"n: {body.n}; this server returns one choice per request (n=1)", param="n")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or any(not x for x in stops):
        raise ApiError(400, f"stop: up to {MAX_STOPS} non-empty strings", param="stop")
    room = s.context
    if room is not None and len(ids) >= room:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; this model takes at most {room} (prompt and "
                            "completion together)", param=prompt, code="context_length_exceeded")
    left = room - len(ids) if room is not None else UNBOUNDED_MAX_TOKENS
    if max_tokens is not None and max_tokens > left:
        why = (f"this model takes {room} tokens and the prompt uses {len(ids)}, leaving {left}" if room is not None
               else f"at most {left} new tokens per request here")
        raise ApiError(400, f"max_tokens: {max_tokens}, but {why}", param="max_tokens", code="context_length_exceeded")
    task = s.cfg.task  # unset sampling settings: the run's own (task.do_sample, temperature, top_p, max_new_tokens)
    temperature = body.temperature if body.temperature is not None else \
        (task["temperature"] if task["do_sample"] else 0.0)
    top_p = body.top_p if body.top_p is not None else (task["top_p"] if task["do_sample"] else 1.0)
    return GenRequest(ids, max_tokens or min(task["max_new_tokens"], left), temperature=temperature, top_p=top_p,
                      stop=stops, seed=body.seed)


async def _run(state: State, s: Served, items: list):
    """Queue ``items`` for ``s`` and wait for all their results."""
    batcher = state.batcher
    _admit(batcher, len(items))
    futures = []
    try:
        futures = [batcher.submit(s.name, item) for item in items]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        for f in futures:
            f.cancel()  # a request whose caller went away leaves the queue (no-op when done)
        batcher.release(len(items))
    for r in results:
        if isinstance(r, UsageError):
            raise ApiError(400, str(r))
        if isinstance(r, BaseException):
            raise r
    return results


def _admit(batcher: Batcher, n: int) -> None:
    try:
        batcher.admit(n)
    except Overloaded as e:
        raise ApiError(503, f"the server is busy: {e}; retry later", kind="server_error", code="overloaded",
                       headers={"Retry-After": "1"}) from None


def _usage(req: GenRequest) -> dict:
    return {"prompt_tokens": len(req.prompt_ids), "completion_tokens": req.completion_tokens,
            "total_tokens": len(req.prompt_ids) + req.completion_tokens}


async def _answer(state: State, s: Served, body: Sampling, req: GenRequest, kind: str):
    ident, created = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(state, s, req, kind, ident, created, include_usage)
    (req,) = await _run(state, s, [req])
    if kind == "chat.completion":
        choice = {"index": 0, "message": {"role": "assistant", "content": req.text}, "logprobs": None,
                  "finish_reason": req.finish_reason}
    else:
        choice = {"index": 0, "text": req.text, "logprobs": None, "finish_reason": req.finish_reason}
    return {"id": ident, "object": kind, "created": created, "model": s.name, "choices": [choice],
            "usage": _usage(req)}


class _Stream(StreamingResponse):
    """A stream that always calls ``on_close`` once the response is over: sent, failed, or its client gone."""

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _stream(state: State, s: Served, req: GenRequest, kind: str, ident: str, created: int, include_usage: bool):
    """Server-sent events in OpenAI's chunk format; the request's slot is held until the stream ends."""
    batcher = state.batcher
    _admit(batcher, 1)
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    req.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    future = batcher.submit(s.name, req)
    future.add_done_callback(lambda _: pieces.put_nowait(None))
    chat = kind == "chat.completion"

    def chunk(delta: str | None = None, finish: str | None = None, first: bool = False) -> str:
        if chat:
            d = ({"role": "assistant", "content": ""} if first else {}) | ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return _event({"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created,
                       "model": s.name, "choices": [choice]})

    async def events():
        if chat:
            yield chunk(first=True)
        while (piece := await pieces.get()) is not None:
            yield chunk(piece)
        if future.cancelled():
            return
        if (e := future.exception()) is not None:
            message = str(e) if isinstance(e, UsageError) else f"internal error: {first_line(e)}"
            yield _event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
            return
        yield chunk(finish=req.finish_reason)
        if include_usage:
            yield _event({"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created,
                          "model": s.name, "choices": [], "usage": _usage(req)})
        yield "data: [DONE]\n\n"

    def close():
        req.cancelled.set()  # a client gone mid-stream ends its row at the next token (no-op once finished)
        future.cancel()  # or, not started yet, leaves the queue
        batcher.release(1)

    return _Stream(events(), close)


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------- auth
class Gate:
    """ASGI middleware: the API key check (all routes but /health) and POST bodies read as JSON (the access log
    wraps it)."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "POST":  # every body here is JSON, whatever the client called it (curl -d: a form)
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        if self.state.api_key and scope["path"] != "/health" and not self._authorized(scope):
            response = error_response(401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.state.api_key.encode())
