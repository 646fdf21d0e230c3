"""Schema-driven fuzzing (schemathesis) of the live server on 127.0.0.1: every operation of the served OpenAPI
schema, schema-valid and schema-violating requests, a bounded number of examples each. No response may be a
5xx, and every response must conform to the schema (documented status, content type, body schema)."""

from __future__ import annotations

import collections

import schemathesis  # a dev dependency: CI installs it, so the fuzz test never skips silently
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from test_eaas_api import KEY, serving

MAX_EXAMPLES = 25
"""Per operation and generation mode: 4 operations × 2 modes × 25 ≈ 200 requests, ~10-20 s on 2 cores."""

# Not checked: `positive_data_acceptance` — a schema-valid text can still be longer than the model's context
# in tokens (a 400 by design; JSON Schema cannot express a token count).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


def test_fuzz_finds_no_server_error(tmp_path):
    with serving(tmp_path, anonymous_burst=1000) as (h, _, qlog, _):
        schema = schemathesis.openapi.from_url(h.url + "/openapi.json")
        statuses: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        ops = [r.ok() for r in schema.get_all_operations()]
        assert {op.label for op in ops} == {"GET /health", "GET /v1/models", "GET /v1/models/{model_id}",
                                            "POST /v1/embeddings"}

        def fuzz(label, mode, strategy):
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                r = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
                statuses[(label, mode)][r.status_code] += 1
                case.validate_response(r, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing to violate (an operation without parameters or body)
                assert mode == "negative", label

        for op in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(op.label, mode.value, op.as_strategy(generation_mode=mode))
        print("\nfuzz status counts:", {f"{k[0]} [{k[1]}]": dict(v) for k, v in sorted(statuses.items())})
        total = sum(sum(c.values()) for c in statuses.values())
        assert all(code < 500 for c in statuses.values() for code in c)
        assert sum(statuses[("POST /v1/embeddings", "positive")][s] for s in (200,)) > 0  # reached the encoder
        assert total >= 4 * MAX_EXAMPLES // 2 and qlog.count() >= total  # every fuzz request was logged
