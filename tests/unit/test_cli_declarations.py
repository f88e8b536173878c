"""``driftline validate`` and ``driftline schema``, and the command line's robustness to a
pipeline module that does not load: each run in-process, with ``DRIFTLINE_PIPELINES``
naming a module written in ``tmp_path`` and the pipelines loaded again."""

from __future__ import annotations

import json
import textwrap

import pytest

from driftline.adapters.config import Settings
from driftline.cli import build_parser, main
from driftline.tools.declarations import json_schemas
from serving.openapi import document
from streams.catalog.fraud import FRAUD, Transaction
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

HEADER = """\
from dataclasses import replace

from pydantic import Field
from river import linear_model

import streams.catalog.fraud as fraud
import streams.catalog.pricing as pricing
from streams.declarations import Agg, PipelineSpec, Raw, Sliding
from streams.schemas import Record
"""

PAYMENTS = """\
class Payment(Record):
    event_id: str
    card: str
    amount_eur: float = Field(alias="amount-eur", gt=0)
    ts: float


class Outcome(Record):
    event_id: str
    is_fraud: bool
    ts: float


def model():
    return linear_model.LogisticRegression()


PAYMENTS = PipelineSpec(
    name="payments", event_type=Payment, entity_field="card", time_field="ts",
    label_type=Outcome, label_field="is_fraud", task="binary", model=model,
    metrics=("roc_auc",), events_topic="payments",
    features=(Raw("amount", field="amount-eur"),
              Agg("amount_sum_10m", "sum", Sliding(600.0), field="amount-eur")),
)
"""


@pytest.fixture
def declare(tmp_path, monkeypatch):
    """Write a pipeline module and name it in DRIFTLINE_PIPELINES; the pipelines are
    loaded again (after the test too, when the environment is back)."""

    def write(body: str, name: str = "mine.py") -> str:
        path = tmp_path / name
        path.write_text(HEADER + "\n" + textwrap.dedent(body))
        monkeypatch.setenv("DRIFTLINE_PIPELINES", str(path))
        PIPELINES.reload()
        return str(path)

    yield write
    PIPELINES.reload()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_an_unknown_field_stops_every_command_with_the_module_and_field(declare, capsys):
    path = declare("""\
        BAD = replace(fraud.FRAUD, name="bad", features=(Raw("amount_x"),), fallback=None,
                      embeddings=None)
        """)
    build_parser()  # the parser is built: choices are left open
    code, out, err = run(capsys, "validate")
    assert code == 1 and out == ""
    assert err.strip() == (f"driftline: {path}: ValueError: bad: feature amount_x reads "
                           "unknown field 'amount_x'")
    for argv in (["schema", "fraud"], ["worker"], ["topics"], ["serve"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert err.startswith(f"driftline: {path}: ") and "'amount_x'" in err


def test_an_import_error_names_the_module(declare, capsys):
    path = declare("import no_such_package_of_driftline_tests\n")
    code, out, err = run(capsys, "validate")
    assert code == 1
    assert err.strip() == (f"driftline: {path}: ModuleNotFoundError: No module named "
                           "'no_such_package_of_driftline_tests'")
    code, _, err = run(capsys, "replay", "fraud")
    assert code == 2 and "no_such_package_of_driftline_tests" in err


def test_a_duplicate_name_names_both_declarations(declare, capsys):
    path = declare('MINE = replace(pricing.PRICING, description="mine")\n')
    code, _, err = run(capsys, "validate")
    assert code == 1
    assert err.strip() == ("driftline: pipeline 'pricing' is declared twice: by entry point "
                           f"pricing = streams.catalog.pricing and by {path}")


def test_commands_without_pipelines_run_beside_a_broken_module(declare, capsys, tmp_path):
    declare("import no_such_package_of_driftline_tests\n")
    code, out, _ = run(capsys, "init", "--help")
    assert code == 0 and "--topic" in out
    code, out, _ = run(capsys, "token", "--name", "t")
    assert code == 0 and "DRIFTLINE_API_TOKENS" in out


def test_a_model_of_the_wrong_kind_is_a_problem(declare, capsys):
    declare(PAYMENTS.replace("linear_model.LogisticRegression()",
                             "linear_model.LinearRegression()")
            + 'WRONG = replace(PAYMENTS, name="wrong", metrics=("mae",))\n')
    code, out, err = run(capsys, "validate", "payments", "wrong")
    assert code == 1
    assert "PROBLEM" in out
    assert ("driftline: payments: model" in err and "gives a LinearRegression, not a River "
            "classifier (the task is binary)" in err)
    assert "driftline: wrong: metrics ['mae'] are not binary metrics" in err


def test_schema_of_fraud_is_the_openapi_body(capsys):
    code, out, err = run(capsys, "schema", "fraud")
    assert code == 0 and err == ""
    schemas = json.loads(out)
    assert schemas == json_schemas(FRAUD)
    assert schemas["event"] == Transaction.model_json_schema(by_alias=True)
    assert set(schemas["event"]["required"]) == {"event_id", "card_id", "merchant_id",
                                                 "amount", "ts"}
    assert set(schemas["label"]["properties"]) == {"event_id", "is_fraud", "ts"}
    # The same schema as the scoring route's body in the API's OpenAPI document.
    api = document(Settings())
    body = api["paths"]["/v1/score/fraud"]["post"]["requestBody"]["content"]
    name = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert api["components"]["schemas"][name] == schemas["event"]


def test_schema_and_validate_of_a_user_module_by_alias(declare, capsys, monkeypatch):
    path = declare(PAYMENTS)
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", "t9")
    code, out, _ = run(capsys, "schema", "payments")
    assert code == 0
    event = json.loads(out)["event"]
    assert "amount-eur" in event["properties"] and "amount_eur" not in event["properties"]
    assert "amount-eur" in event["required"]
    code, out, err = run(capsys, "validate", "payments")
    assert code == 0, err
    assert f"declared in  {path}" in out
    assert "    events       payments (declared)\n" in out  # as named: no namespace
    assert "    labels       t9.payments.labels\n" in out
    assert "amount_sum_10m  sum of 'amount-eur' over the sliding 600s window" in out
    assert f"DRIFTLINE_PIPELINES={path}" in out and "namespace: t9" in out
    code, _, err = run(capsys, "produce", "payments")  # no generator: the user's producer
    assert code == 2 and "payments declares no generator" in err


def test_validate_lists_fraud_topics_features_model_and_policies(capsys, monkeypatch):
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", "t9")
    code, out, err = run(capsys, "validate")
    assert code == 0 and err == ""
    fraud = out.split("\n\n")[[n for n in sorted(PIPELINES)].index("fraud")]
    for kind, topic in vars(PipelineTopics.for_spec(FRAUD, "t9")).items():
        assert f"    {kind:<12} {topic}\n" in fraud
    for name in FRAUD.feature_names:
        assert f"\n    {name} " in fraud
    assert "  model        streams.catalog.fraud:fraud_logistic\n" in fraud
    assert "  candidates   none\n" in fraud
    for policy in ("drift        adwin", "retrain      the pipeline's model",
                   "fallback     the pipeline's model on amount, log_amount",
                   "embeddings   every feature; L2 distance, HNSW index"):
        assert policy in fraud
    assert out.rstrip().endswith("namespace: t9")
    assert f"{len(PIPELINES)} pipeline(s) valid" in out
