"""Property-based fuzzing of the live service from its own OpenAPI schema (schemathesis): no request gets a 5xx.

Small and bounded (a few dozen generated requests per operation, a stand-in model) so that it runs in the
default suite; every generated request goes over a real loopback socket.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from test_service import TOKEN, HashEmbedder, _small_index, serving  # noqa: E402  (same folder)

from vreid.deploy.service import Access, Limits, create_app  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    limits = Limits(max_bytes=200_000, max_pixels=1_000_000, max_files=4, body_timeout_s=5.0)
    app = create_app(_small_index(tmp_path_factory.mktemp("fuzz") / "index"), HashEmbedder(), limits,
                     access=Access(token=TOKEN))
    with serving(app, limits) as client:
        yield client


def test_no_generated_request_gets_a_server_error(live):
    schema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /health", "POST /search", "POST /gallery", "DELETE /gallery/{image_id}"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(headers=AUTH, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            assert isinstance(response.json(), dict)  # a JSON answer, also for every refusal
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

        call()
    assert 200 in seen["GET /health"] and 404 in seen["DELETE /gallery/{image_id}"], seen
    assert {415, 422} & seen["POST /search"] and {415, 422} & seen["POST /gallery"], seen  # the requests got in
