"""The OpenAPI document is true: schemathesis fuzzes every operation of the in-process app from
``/openapi.json`` (valid and invalid requests, derandomized and bounded) and no answer is a 5xx
or strays from what the document declares (status, content type, body schema). The one 5xx a
client can ask for is allowed: a 504 ``deadline_exceeded`` when its own X-Request-Timeout-Ms (a
fraction of a millisecond, as fuzzing picks) ran out before its batch began.

Cases are drawn by Hypothesis in a worker thread and sent through the test's own ASGI client on
the event loop that runs the app (its lifespan, batcher and pools live there).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.imaging import SUPPORTED_MEDIA_TYPES
from tests.conftest import make_settings, running_app
from tests.fakes import FakeClassifier

pytestmark = pytest.mark.asyncio

EXAMPLES_PER_OPERATION = 25
#: /classify gets more: a few in each fifty reach the decoder with a body it refuses (a 400), and
#: which ones depends on the generator's state left by earlier tests in the process; with 25 per
#: mode a whole-suite run sometimes drew none.
EXAMPLES_FOR_CLASSIFY = 100
SEND_TIMEOUT_S = 30
BASE_URL = "http://testserver"


async def test_openapi_document_declares_the_classify_body() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/classify"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    form = content["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"]["format"] == "binary"
    assert set(content) == {"multipart/form-data", *SUPPORTED_MEDIA_TYPES}
    assert {"image/png", "image/jpeg", "image/webp"} <= set(content)
    assert all(content[m]["schema"] == {"type": "string", "format": "binary"} for m in SUPPORTED_MEDIA_TYPES)
    # Errors are documented with the body they really have, not FastAPI's validation schema.
    error = document["paths"]["/classify"]["post"]["responses"]["422"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def _sent(case: Any) -> requests.PreparedRequest:
    """The request exactly as it goes on the wire (multipart encoded, headers set)."""
    return requests.Request(**case.as_transport_kwargs(base_url=BASE_URL)).prepare()


async def test_schemathesis_finds_no_server_error_and_exercises_classify_with_a_body() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        loop = asyncio.get_running_loop()
        schema = schemathesis.openapi.from_dict((await client.get("/openapi.json")).json())
        operations = [result.ok() for result in schema.get_all_operations()]
        # PUT /v1/batching last: the settings it changes (a 60 s wait) must not slow the others.
        operations.sort(key=lambda op: (op.method.upper() == "PUT", op.path, op.method))
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /classify",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "GET /v1/model",
            "GET /v1/batching",
            "PUT /v1/batching",
            "GET /v2",
            "GET /v2/health/ready",
            "GET /v2/models/{model}/config",
            "POST /v2/models/{model}/infer",
            "POST /v2/models/{model}/versions/{version}/infer",
        }
        statuses: Counter[tuple[str, int]] = Counter()
        classify_bodies = 0

        def send(prepared: requests.PreparedRequest) -> httpx.Response:
            request = client.request(
                str(prepared.method),
                str(prepared.url),
                headers=dict(prepared.headers),
                content=prepared.body or b"",
            )
            return asyncio.run_coroutine_threadsafe(request, loop).result(timeout=SEND_TIMEOUT_S)

        def fuzz(operation: Any, mode: schemathesis.GenerationMode) -> None:
            @settings(
                max_examples=EXAMPLES_FOR_CLASSIFY
                if operation.path == "/classify"
                else EXAMPLES_PER_OPERATION,
                derandomize=True,
                database=None,
                deadline=None,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                nonlocal classify_bodies
                prepared = _sent(case)
                response = send(prepared)
                statuses[(f"{case.method} {case.path}", response.status_code)] += 1
                if case.path == "/classify" and prepared.body:
                    classify_bodies += 1
                if response.status_code >= 500:
                    assert _own_deadline(prepared, response), (response.status_code, response.text)
                case.validate_response(
                    response,
                    checks=[
                        status_code_conformance,
                        content_type_conformance,
                        response_schema_conformance,
                        negative_data_rejection,
                    ],
                )

            try:
                check()
            except Unsatisfiable:
                # Negative cases exist only where some value is invalid: a path of free strings
                # (the Open Inference Protocol's model name and version) takes any.
                if mode is not schemathesis.GenerationMode.NEGATIVE or operation.definition.raw.get(
                    "requestBody"
                ):
                    raise

        for operation in operations:
            await asyncio.to_thread(fuzz, operation, schemathesis.GenerationMode.POSITIVE)
            raw = operation.definition.raw
            if raw.get("parameters") or raw.get("requestBody"):  # (no input: nothing invalid to send)
                await asyncio.to_thread(fuzz, operation, schemathesis.GenerationMode.NEGATIVE)

    own_deadlines = {("POST /classify", 504), *((op, 504) for op, _ in statuses if op.endswith("/infer"))}
    assert not [key for key in statuses if key[1] >= 500 and key not in own_deadlines], statuses
    assert classify_bodies > 0, statuses
    # Bodies reached the decoder (an undecodable image is a 400) and the model (a generated image).
    classify = {key: n for key, n in statuses.items() if key[0] == "POST /classify"}
    assert statuses[("POST /classify", 400)] > 0, classify
    assert statuses[("POST /classify", 200)] > 0, classify


def _own_deadline(prepared: requests.PreparedRequest, response: httpx.Response) -> bool:
    """A 504 for the deadline the client set itself."""
    asked = "x-request-timeout-ms" in {name.lower() for name in prepared.headers}
    if not asked or response.status_code != 504:
        return False
    error = response.json()["error"]  # the Open Inference Protocol's is the message itself
    return "deadline" in error if isinstance(error, str) else error["code"] == "deadline_exceeded"
