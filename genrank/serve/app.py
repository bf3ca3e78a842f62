"""The rerank HTTP service: Cohere, Jina and text-embeddings-inference endpoints in front of a Reranker."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..errors import GenrankError
from ..prompts import Prompts
from ..reranker import Reranker, ScoredPairs
from ..scorer import best_first
from .errors import ApiError, error_response, internal_error
from .metrics import Metrics
from .middleware import CLIENT_CLOSED, BearerAuth, BodyLimit, Telemetry
from .scheduler import QueueFull, Scheduler
from .schemas import CohereV2Request, ErrorBody, JinaRequest, RerankResponse, TEIRequest, TEIResult
from .settings import ServeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class _ClientGone(Exception):
    """The client closed the connection before its answer."""


@dataclass
class Ranking:
    """One request's scores (None for no documents) and the prompt tokens they took."""

    scored: ScoredPairs | None
    prompt_tokens: int

    @property
    def relevance(self) -> np.ndarray:
        """The relevance each document is reported with: the calibrated probability with --calibration."""
        return self.scored.relevance if self.scored.probability is None else self.scored.probability

    def order(self, top_n: int | None, min_relevance: float | None = None) -> list[int]:
        """Document indices best first (ties in input order), those with at least ``min_relevance``, the
        best ``top_n`` of them (None or 0: all)."""
        if self.scored is None:
            return []
        order = best_first(self.scored.relevance)
        if min_relevance is not None:
            order = order[self.relevance[order] >= min_relevance]
        return order[: top_n or None].tolist()


class Service:
    """The loaded Reranker and its scheduler, and the one scoring path every endpoint shares."""

    def __init__(self, reranker: Reranker | Callable[[], Reranker], settings: ServeSettings, metrics: Metrics,
                 on_load_error: Callable[[BaseException], None] | None):
        self.settings, self.metrics = settings, metrics
        self._source, self._on_load_error = reranker, on_load_error
        self.reranker: Reranker | None = None
        self.scheduler: Scheduler | None = None
        self.started = int(time.time())

    @property
    def model_name(self) -> str:
        engine = self.reranker.engine if self.reranker is not None else None
        return self.settings.model_name or (engine is not None and engine.model_name) or "genrank"

    async def load(self) -> None:
        """Load the Reranker on a worker thread (the server answers /health with 503 meanwhile)."""
        try:
            reranker = self._source if isinstance(self._source, Reranker) else await asyncio.to_thread(self._source)
        except Exception as e:
            log.error("the model could not be loaded: %s: %s", type(e).__name__, e)
            if self._on_load_error is None:
                raise
            self._on_load_error(e)
            return
        s = self.settings
        self.scheduler = Scheduler(reranker, self.metrics, max_batch_pairs=s.max_batch_pairs, max_wait=s.batch_wait,
                                   max_pending_pairs=s.max_queue_pairs)
        self.scheduler.start()
        self.reranker = reranker
        log.info("ready: %r (%s)", reranker,
                 "requests go to the engine as they come" if self.scheduler.native else
                 f"up to {s.max_batch_pairs} prompts per engine call" if s.max_batch_pairs else
                 "one request per engine call")

    async def close(self) -> None:
        """Stop the scheduler; close the Reranker if this service made it (a Reranker passed in is its owner's)."""
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.reranker is not None and not isinstance(self._source, Reranker):
            await self.reranker.aclose()

    def ready(self) -> tuple[Reranker, Scheduler]:
        if self.reranker is None or self.scheduler is None:
            raise ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
        return self.reranker, self.scheduler

    async def rank(self, request: Request, query: str, texts: list[str], *, field: str,
                   max_document_tokens: int | None = None, long_documents: str | None = None,
                   refuse_cut: bool = False, instruction: str | None = None) -> Ranking:
        """Score ``texts`` against ``query``: admitted under the queue limit, prepared on a worker
        thread, scored by the scheduler, cancelled if the client goes away or time runs out."""
        reranker, scheduler = self.ready()
        if instruction is not None and not reranker.template.takes_instruction:
            raise ApiError(422, f"instruction: this server's recipe {reranker.template.name!r} takes no instruction",
                           field="instruction")
        if len(texts) > self.settings.max_documents:
            raise ApiError(413, f"{field} has {len(texts)} items; this server takes at most "
                                f"{self.settings.max_documents} per request (--max-documents)", field=field)
        request.state.pairs = len(texts)
        if not texts:
            return Ranking(None, 0)
        try:
            with scheduler.admit(len(texts)):
                scored, tokens = await _guarded(
                    request, self._score(reranker, scheduler, query, texts, field=field, refuse_cut=refuse_cut,
                                         max_document_tokens=max_document_tokens, long_documents=long_documents,
                                         instruction=instruction),
                    self.settings.request_timeout)
        except QueueFull as e:
            raise ApiError(429, str(e), headers={"Retry-After": "1"}) from None
        except (ApiError, _ClientGone):
            raise
        except Exception as e:  # a bug: its text (which may hold anything) goes to the log, not the client
            raise internal_error(500, "the request failed", e, log) from None
        if scored.errors:
            first = min(scored.errors)
            raise ApiError(502, f"{len(scored.errors)} of {len(texts)} documents could not be scored; "
                                f"{field}[{first}]: {scored.errors[first]}", field=f"{field}[{first}]")
        self.metrics.pairs.inc(len(texts))
        return Ranking(scored, tokens)

    async def _score(self, reranker: Reranker, scheduler: Scheduler, query: str, texts: list[str], *, field: str,
                     refuse_cut: bool, max_document_tokens: int | None,
                     long_documents: str | None, instruction: str | None = None) -> tuple[ScoredPairs, int]:
        if max_document_tokens is not None and reranker.builder.tokenizer is None:
            max_document_tokens = None  # no tokenizer to count with: documents go whole, as all prompts do
        parts, built = [], 0
        for piece in _pieces([(query, t) for t in texts], min(self.settings.max_batch_pairs, _PIECE) or _PIECE):
            try:  # piece by piece, so that a request cancelled meanwhile stops here
                parts.append(await asyncio.to_thread(reranker.prepare, piece,
                                                     None if instruction is None else [instruction] * len(piece),
                                                     long_documents=long_documents,
                                                     max_document_tokens=max_document_tokens))
            except GenrankError as e:  # genrank's own message about this request's input
                raise ApiError(422, str(e)) from None
            built += len(parts[-1])
            if built > self.settings.max_queue_pairs:
                raise ApiError(413, f"the {field} make more than {self.settings.max_queue_pairs} windows of "
                                    "--max-length tokens, the most this server takes (--max-queue-pairs)", field=field)
        prompts = Prompts.concat(parts)
        if refuse_cut and prompts.truncated.any():
            cut = int(np.argmax(prompts.truncated))
            n = int(prompts.pair_index[cut]) if prompts.pair_index is not None else cut
            raise ApiError(413, f"{field}[{n}] does not fit max_length={reranker.builder.max_length} tokens with the "
                                "query; send truncate: true to cut it", field=f"{field}[{n}]")
        windows = len(prompts) - len(texts)  # long documents in chunks: each window is a prompt to score
        with scheduler.admit(windows):
            try:
                scored = await scheduler.score(parts)
            except Exception as e:  # the engine failed for the whole call (e.g. a remote server refused the key)
                raise internal_error(502 if scheduler.native else 500, "the engine failed", e, log) from None
        tokens = sum(map(len, prompts.token_ids)) if prompts.token_ids is not None else 0
        return scored, tokens


_PIECE = 64  # pairs whose prompts are built at a time, and the most in one part sent to the scheduler
_PIECE_CHARS = 1 << 20  # characters of documents built at a time (a piece holds at least one pair)


def _pieces(pairs: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    """``pairs`` in consecutive pieces of at most ``size`` pairs and about ``_PIECE_CHARS`` characters."""
    piece: list[tuple[str, str]] = []
    chars = 0
    for pair in pairs:
        if piece and (len(piece) == size or chars + len(pair[1]) > _PIECE_CHARS):
            yield piece
            piece, chars = [], 0
        piece.append(pair)
        chars += len(pair[1])
    if piece:
        yield piece


async def _guarded(request: Request, work: Awaitable[T], timeout: float) -> T:
    """``work``'s result; cancelled when the client disconnects (_ClientGone) or after ``timeout`` (504)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait((task, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # no-op when it finished
    if task in done:
        return task.result()
    await asyncio.gather(task, return_exceptions=True)
    if gone in done:
        raise _ClientGone
    raise ApiError(504, f"not answered within {timeout:g} s (--request-timeout)")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _results(ranking: Ranking, top_n: int | None, documents: list[Any] | None,
             min_relevance: float | None = None) -> list[dict[str, Any]]:
    """Cohere/Jina results best first; ``documents`` given: each result carries its document."""
    s = ranking.scored
    results = []
    for i in ranking.order(top_n, min_relevance):
        item: dict[str, Any] = {"index": i, "relevance_score": float(ranking.relevance[i])}
        if documents is not None:
            doc = documents[i]
            item["document"] = doc if isinstance(doc, dict) else {"text": doc}
        extra = {"score": float(s.score[i]), "label_mass": _number(s.label_mass[i]), "truncated": bool(s.truncated[i])}
        if s.probability is not None:  # relevance_score is the calibrated probability: keep the uncalibrated value
            extra["relevance"] = float(s.relevance[i])
        if s.windows is not None:
            extra["windows"] = int(s.windows[i])
        item["genrank"] = extra
        results.append(item)
    return results


def _number(value: float) -> float | None:
    """A float for JSON; NaN (e.g. the label mass of raw logits) is null."""
    return None if math.isnan(value) else float(value)


def _validated(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


_FIELD = re.compile(r"\w+(?:\[[^\]]*\])*")


def _field(loc: tuple[Any, ...]) -> str:
    name = str(loc[0])
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """A 400 for a body that is not a JSON object, else a 422 naming the first bad field and its value."""
    error = errors[0]
    loc = tuple(error["loc"])[1:] if error["loc"] and error["loc"][0] == "body" else tuple(error["loc"])
    if error["type"] == "json_invalid":
        return error_response(400, f"the body is not valid JSON: {error.get('ctx', {}).get('error', 'decode error')} "
                                   f"at character {loc[0] if loc else 0}")
    if not loc:
        return error_response(400, "the body must be a JSON object, sent with Content-Type: application/json")
    field = _field(loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(str(loc[0])):  # genrank's own message, which names the field
        field = _FIELD.match(message)[0]
    else:  # pydantic's: name the field and the value
        message = f"{field}: {message[:1].lower()}{message[1:]}"
        if error["type"] != "missing":
            message += f", got {error.get('input')!r:.80}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more errors)"
    return error_response(422, message, field=field)


_ERRORS = {status: {"model": ErrorBody, "description": what} for status, what in (
    (400, "the body is not a JSON object"), (401, "missing or wrong API key"),
    (408, "the body was not received within --body-timeout"),
    (413, "too many documents, body too large, or (TEI truncate: false) a text that does not fit"),
    (422, "a field is missing or wrong"), (429, "the queue is full: retry after Retry-After seconds"),
    (500, "the engine failed"), (502, "the remote engine could not score a document"),
    (503, "the model is loading, or the server is shutting down"), (504, "not answered within --request-timeout"))}
_RERANK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
    TEIRequest.model_json_schema(), {"$ref": "#/components/schemas/JinaRequest"}]}}}}}


def create_app(reranker: Reranker | Callable[[], Reranker], settings: ServeSettings | None = None, *,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The rerank service as an ASGI app.

    ``reranker`` is a Reranker or a function that makes one; a function runs on a worker thread
    when the app starts, and until it returns every endpoint but /health answers 503. If it
    raises, ``on_load_error`` gets the exception (``serve`` stops the server with it).
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    service = Service(reranker, settings, metrics, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.load())
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await service.close()

    app = FastAPI(title="genrank serve", version=__version__, lifespan=lifespan,
                  description="Rerank endpoints in the Cohere (v2, v1), Jina and text-embeddings-inference shapes, "
                              "scored by a generative reranker. relevance_score is on [0, 1]; with a calibration "
                              "(genrank serve --calibration) it is the calibrated probability that the document is "
                              "relevant.")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> Response:
        return _validation_response(list(e.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        return error_response(e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, e: _ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.post("/v2/rerank", summary="Cohere v2 rerank", responses={200: {"model": RerankResponse}, **_ERRORS})
    async def rerank_v2(body: CohereV2Request, request: Request) -> JSONResponse:
        ranking = await service.rank(request, body.query, body.documents, field="documents",
                                     max_document_tokens=body.max_tokens_per_doc, instruction=body.task_instruction())
        return JSONResponse(_rerank_body(ranking, "2", _results(
            ranking, body.top_n, body.documents if body.return_documents else None, body.min_relevance)))

    @app.post("/v1/rerank", summary="Jina / Cohere v1 rerank", responses={200: {"model": RerankResponse}, **_ERRORS})
    async def rerank_v1(body: JinaRequest, request: Request) -> JSONResponse:
        ranking = await service.rank(request, body.query, body.texts(), field="documents",
                                     max_document_tokens=body.max_tokens_per_doc, instruction=body.task_instruction())
        return JSONResponse(_rerank_body(ranking, "1", _results(
            ranking, body.top_n, body.documents if body.return_documents else None, body.min_relevance)))

    @app.post("/rerank", summary="text-embeddings-inference rerank (a body with texts), else Jina",
              openapi_extra=_RERANK_BODY, responses={200: {"model": list[TEIResult] | RerankResponse}, **_ERRORS})
    async def rerank(request: Request, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        if "texts" not in body:
            return await rerank_v1(_validated(JinaRequest, body), request)
        tei = _validated(TEIRequest, body)
        ranking = await service.rank(request, tei.query, tei.texts, field="texts",
                                     long_documents="truncate" if tei.truncate else None,
                                     refuse_cut=tei.truncate is False, instruction=tei.task_instruction())
        s = ranking.scored
        out = []
        for i in ranking.order(None, tei.min_relevance):
            item: dict[str, Any] = {"index": i, "score": float(s.score[i] if tei.raw_scores else ranking.relevance[i])}
            if tei.raw_scores:
                item["label_mass"] = _number(s.label_mass[i])
            if tei.return_text:
                item["text"] = tei.texts[i]
            out.append(item)
        return JSONResponse(out)

    def _rerank_body(ranking: Ranking, version: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = ranking.prompt_tokens
        return {"id": str(uuid.uuid4()), "model": service.model_name, "results": results,
                "meta": {"api_version": {"version": version}, "tokens": {"input_tokens": tokens, "output_tokens": 0}},
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.head("/health", include_in_schema=False)
    @app.get("/health", summary="200 once the model is loaded, 503 before (HEAD too)")
    async def health() -> JSONResponse:
        if service.reranker is None:
            return error_response(503, "the model is loading", headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "model": service.model_name})

    @app.get("/v1/models", summary="the served model")
    async def models() -> JSONResponse:
        service.ready()
        return JSONResponse({"object": "list", "data": [{"id": service.model_name, "object": "model",
                                                         "created": service.started, "owned_by": "genrank"}]})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "the Prometheus text format"}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Each middleware wraps those added before it: telemetry outermost (refused requests are logged and
    # counted too), then auth, then the body limit (no body is read for a request without a key).
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    app.add_middleware(BearerAuth, keys=settings.api_keys)
    app.add_middleware(Telemetry, metrics=metrics, paths=[r.path for r in app.routes])
    return app


__all__ = ["Ranking", "Service", "create_app"]
