"""Request bodies of the rerank endpoints: Cohere v2, Cohere v1 / Jina, and text-embeddings-inference.

Fields the services define and genrank has no use for (``rank_fields`` aside) are accepted and
ignored, so their clients work unchanged. Each text is checked as the Reranker checks it (a
string, valid Unicode; the query not blank), with errors that name the field and the value.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from ..validation import check_text

# What the query's check enforces, in the schema: at least one character that is not whitespace.
_QUERY = {"minLength": 1, "pattern": r"\S"}


def _integral(value: Any) -> Any:
    """A float with no fraction as the int it is (JSON Schema's integers include 5.0); else unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strict otherwise: "3" and true are not counts.
Count = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
PositiveCount = Annotated[int, Field(ge=1), BeforeValidator(_integral)]

_OBJECT_WITH_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


# ``instruction`` and ``instruct`` are two names for one field: a request gives at most one of them.
_ONE_INSTRUCTION = {"not": {"properties": {"instruction": {"type": "string"}, "instruct": {"type": "string"}},
                            "required": ["instruction", "instruct"]}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=_ONE_INSTRUCTION)

    instruction: str | None = Field(None, description=(
        "task instruction for recipes that take one (vLLM, LiteLLM); 422 when the server's recipe takes none"))
    instruct: str | None = Field(None, description="the same, as SGLang names it")

    @field_validator("query", check_fields=False)
    @classmethod
    def _query(cls, value: str) -> str:
        return check_text(value, "query", allow_empty=False)

    @field_validator("instruction", "instruct")
    @classmethod
    def _instruction(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.field_name == "instruct" and info.data.get("instruction") is not None:
            raise ValueError("instruct and instruction are two names for one field; send one of them")
        return check_text(value, info.field_name)

    def task_instruction(self) -> str | None:
        """The request's instruction (``instruction`` or ``instruct``), None for the server's own."""
        return self.instruction if self.instruction is not None else self.instruct


class CohereV2Request(_Request):
    """``POST /v2/rerank``: Cohere's v2 rerank request."""

    model: str | None = Field(None, description="accepted and ignored: the server scores with its own model")
    query: str = Field(description="the search query (not blank)", json_schema_extra=_QUERY)
    documents: list[str] = Field(description="the texts to rank")
    top_n: Count | None = Field(None, description="return only the best N (absent or 0: all)")
    return_documents: bool = Field(False, description="include each document's text in its result")
    max_tokens_per_doc: PositiveCount | None = Field(None, description="cut each document to this many tokens first")
    min_relevance: float | None = Field(None, ge=0, le=1, description=(
        "return only documents with at least this relevance_score (the calibrated probability when the server "
        "has --calibration)"))

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[str]) -> list[str]:
        return [check_text(d, f"documents[{n}]") for n, d in enumerate(value)]


class JinaRequest(_Request):
    """``POST /v1/rerank`` and ``POST /rerank`` without ``texts``: Jina's and Cohere v1's rerank request.

    A document is a string or an object with a string ``text`` (its other fields come back
    with it); with ``rank_fields`` the named fields of each object are scored instead, as
    ``field: value`` lines (a value that is not a string as its JSON), and objects need no ``text``.
    """

    model_config = ConfigDict(json_schema_extra={
        **_ONE_INSTRUCTION,
        "if": {"properties": {"rank_fields": {"type": "array", "minItems": 1}}, "required": ["rank_fields"]},
        "else": {"properties": {"documents": {"items": {"anyOf": [{"type": "string"}, _OBJECT_WITH_TEXT]}}}}})

    model: str | None = Field(None, description="accepted and ignored: the server scores with its own model")
    query: str = Field(description="the search query (not blank)", json_schema_extra=_QUERY)
    rank_fields: list[str] | None = Field(None, description="fields of object documents to score (default: text)")
    documents: list[str | dict[str, Any]] = Field(
        description="strings, or objects with a string \"text\" (without rank_fields) or string values for the "
                    "rank_fields they hold")
    top_n: Count | None = Field(None, description="return only the best N (absent or 0: all)")
    return_documents: bool = Field(False, description="include each document in its result")
    max_tokens_per_doc: PositiveCount | None = Field(None, description="cut each document to this many tokens first")
    min_relevance: float | None = Field(None, ge=0, le=1, description=(
        "return only documents with at least this relevance_score (the calibrated probability when the server "
        "has --calibration)"))

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, list):
            return value  # pydantic names the type error
        rank_fields = info.data.get("rank_fields")
        for n, doc in enumerate(value):
            if isinstance(doc, dict) and rank_fields:
                for key in rank_fields:
                    if isinstance(doc.get(key), str):
                        check_text(doc[key], f"documents[{n}][{key!r}]")
                continue
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise ValueError(f"documents[{n}] must be a string or an object with a string \"text\", "
                                 f"got {doc!r:.80}")
            check_text(text, f"documents[{n}]" + ('["text"]' if isinstance(doc, dict) else ""))
        return value

    def texts(self) -> list[str]:
        """The text scored for each document."""
        if not self.rank_fields:
            return [d["text"] if isinstance(d, dict) else d for d in self.documents]
        return ["\n".join(f"{key}: {_text(d[key])}" for key in self.rank_fields if key in d) if isinstance(d, dict)
                else d for d in self.documents]


def _text(value: Any) -> str:
    """A field's value as scored: a string as it is, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class TEIRequest(_Request):
    """``POST /rerank`` with ``texts``: text-embeddings-inference's rerank request."""

    query: str = Field(description="the search query (not blank)", json_schema_extra=_QUERY)
    texts: list[str] = Field(description="the texts to rank")
    raw_scores: bool = Field(False, description="score = the recipe's raw score (e.g. the expected label value "
                                                "1-7, or a logit) with label_mass, instead of relevance on [0, 1]")
    return_text: bool = Field(False, description="include each text in its result")
    truncate: bool | None = Field(None, description="true: cut texts that do not fit; false: refuse them (413); "
                                                    "absent: the server's --long-documents")
    truncation_direction: Literal["right", "Right"] = Field("right", description="texts are cut at the end")
    min_relevance: float | None = Field(None, ge=0, le=1, description=(
        "return only texts whose relevance on [0, 1] (the calibrated probability when the server has "
        "--calibration) is at least this, whatever raw_scores"))

    @field_validator("texts")
    @classmethod
    def _texts(cls, value: list[str]) -> list[str]:
        return [check_text(t, f"texts[{n}]") for n, t in enumerate(value)]


# -- responses (what /docs shows; the endpoints build them as plain JSON) ----------------------


class GenrankScores(BaseModel):
    score: float = Field(description="the recipe's raw score (expected label value 1-7 for lb-reranker; a log-odds "
                                     "or a logit for others)")
    label_mass: float | None = Field(description="probability the model put on the labels (null when the engine "
                                                 "gave raw logits)")
    truncated: bool = Field(description="the query or document was cut to fit")
    windows: int | None = Field(None, description="windows the document was scored in (--long-documents chunks)")
    relevance: float | None = Field(None, description="the uncalibrated relevance on [0, 1], when the server has "
                                                      "--calibration (relevance_score is then the probability)")


class RerankResult(BaseModel):
    index: int = Field(description="the document's position in the request")
    relevance_score: float = Field(description="relevance on [0, 1] by the recipe's rule; with --calibration the "
                                               "calibrated probability that the document is relevant")
    document: dict[str, Any] | None = Field(None, description="{\"text\": ...} (or the object sent), with return_documents")
    genrank: GenrankScores


class RerankResponse(BaseModel):
    """Cohere v2 / v1 and Jina responses: results best first."""

    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any] = Field(description="{\"api_version\": {\"version\"}, \"tokens\": {\"input_tokens\", \"output_tokens\"}}")
    usage: dict[str, int] = Field(description="{\"prompt_tokens\", \"total_tokens\"}")


class TEIResult(BaseModel):
    """One element of the text-embeddings-inference response (a bare array, best first)."""

    index: int
    score: float = Field(description="relevance on [0, 1] (with --calibration the calibrated probability); with "
                                     "raw_scores the recipe's raw score")
    label_mass: float | None = Field(None, description="with raw_scores")
    text: str | None = Field(None, description="with return_text")


class ErrorBody(BaseModel):
    """Every error: a message for humans, a type, and the field at fault when there is one."""

    message: str
    type: str
    field: str | None = None
    detail: str = Field(description="the message again, where FastAPI's own errors have it")


__all__ = ["CohereV2Request", "ErrorBody", "JinaRequest", "RerankResponse", "TEIRequest", "TEIResult"]
