"""The rerank app against its own OpenAPI schema: schemathesis generates requests from /openapi.json
and checks that none gets a 5xx or an answer the schema does not describe (in-process, ASGI)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings

from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from genrank import Reranker
from genrank.engines import Engine, LabelLogprobs
from genrank.serve import ServeSettings, create_app


class FastEngine(Engine):
    """Prompts built with the tiny model's tokenizer, scored at once by their length (no model)."""

    prompt_format = "tokens"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    @property
    def tokenizer(self):
        return self._tokenizer

    def label_logprobs(self, prompts, labels):
        lengths = np.array([len(ids) for ids in prompts.token_ids], dtype=float)
        logits = -np.abs(lengths[:, None] % 7 - np.arange(len(labels.texts))[None, :])
        return LabelLogprobs(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))


@pytest.fixture(scope="module")
def api_schema(tiny_tokenizer):
    # a recipe that takes an instruction: the schema offers one, and a server whose recipe takes none
    # answers it with 422 (said in the field's description)
    app = create_app(Reranker(engine=FastEngine(tiny_tokenizer), template="lb-reranker-v1-instruct", max_length=256),
                     ServeSettings(max_body_bytes=1 << 20))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    health = schema["/health"]["GET"]
    for _ in range(500):  # the app loads its Reranker in its lifespan, which schemathesis has started
        if health.Case().call().status_code == 200:
            break
    return schema


OPERATIONS = [("/v2/rerank", "POST"), ("/v1/rerank", "POST"), ("/rerank", "POST"), ("/health", "GET"),
              ("/v1/models", "GET"), ("/metrics", "GET")]


@pytest.mark.parametrize(("path", "method", "mode"), [(path, method, "positive") for path, method in OPERATIONS]
                         + [(path, method, "negative") for path, method in OPERATIONS if method == "POST"])
def test_no_request_breaks_the_schema_or_the_server(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @given(operation.as_strategy(GenerationMode(mode)))
    @settings(max_examples=20 if method == "POST" else 5, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)
    def check(case):
        # TEI's truncate: false refuses (413) a text that does not fit max_length, valid as it is
        case.call_and_validate(excluded_checks=[positive_data_acceptance] if path == "/rerank" else None)

    check()
