"""``POST /v1/score/{pipeline}`` and its ``:batch`` form: validate, score with the
pipeline's :class:`~serving.scoring.PipelineScorer` (which knows nothing of HTTP), answer
with the score's body (:func:`score_body`, the shape of :func:`serving.schemas.score_model`)."""

from __future__ import annotations

from aiohttp import web

from driftline.errors import Invalid, TooLarge
from monitoring import metrics
from serving.bodies import read_body
from serving.handlers.common import FINITE_JSON, pipeline_of
from serving.keys import SCORERS, SETTINGS
from serving.routing import Answer, RouteTable
from serving.schemas import batch_answer_model, batch_request_model, event_model, score_model
from serving.scoring import Score
from streams.declarations import PipelineSpec
from streams.schemas import InvalidRecord, decode_json, parse

ROUTES = RouteTable()

EXPLAIN = {
    "name": "explain", "in": "query", "required": False,
    "description": "false leaves the contributions out: one prediction per feature saved",
    "schema": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "true"},
}
NO_ANSWER = "No features or model in time, and the pipeline declares no fallback model."


# The batch route first: "{pipeline}" alone would match "fraud:batch".
@ROUTES.post("/v1/score/{pipeline}:batch", role="scorer", tag="scoring",
             summary="Score up to {batch_max} {pipeline} events",
             description="Each event scored as the single form would, independently of the "
                         "others. One invalid event fails the whole batch, each bad field "
                         "named by its index (`events.3.amount`).",
             parameters=(EXPLAIN,), body=batch_request_model,
             answers=[Answer(200, "The scores, in the order of the events.",
                             batch_answer_model)],
             errors={413: None, 422: None, 503: NO_ANSWER})
async def score_batch(request: web.Request) -> web.Response:
    """Up to ``DRIFTLINE_API_BATCH_MAX`` events in ``{"events": [...]}``, each scored as
    ``POST /v1/score/{pipeline}`` would; one invalid event fails the whole batch, with
    every bad field named by its index (``events.3.amount``)."""
    spec = pipeline_of(request)
    explain = _explain(request)
    limit = request.app[SETTINGS].api_batch_max
    try:
        body = decode_json(await read_body(request))
    except InvalidRecord as exc:
        raise Invalid(exc.fields, "invalid batch") from None
    items = body.get("events") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise Invalid({"events": "a non-empty list of events is required"}, "invalid batch")
    if len(items) > limit:
        raise TooLarge({"events": f"at most {limit} events per batch"}, "batch too large")
    events, errors = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors[f"events.{i}"] = f"expected a JSON object, got {type(item).__name__}"
            continue
        try:
            events.append(parse(spec.event_type, item))
        except InvalidRecord as exc:
            errors.update({f"events.{i}.{k}": v for k, v in exc.fields.items()})
    if errors:
        raise Invalid(errors, "invalid events")
    metrics.BATCH_SIZE.labels(pipeline=spec.name).observe(len(events))
    scores = await request.app[SCORERS][spec.name].score_batch(events, explain)
    return web.json_response({"pipeline": spec.name,
                              "degraded": any(s.degraded for s in scores),
                              "results": [score_body(spec, s) for s in scores]},
                             dumps=FINITE_JSON)


@ROUTES.post("/v1/score/{pipeline}", role="scorer", tag="scoring",
             summary="Score one {pipeline} event",
             description="Features as the worker computes them from the entity's stored "
                         "state (the event is scored, never applied), the model in memory, "
                         "the top feature contributions. When the features or the model are "
                         "not there in time, the pipeline's fallback model answers and the "
                         "score is `degraded`, with the reason.",
             parameters=(EXPLAIN,), body=event_model,
             answers=[Answer(200, "The score.", score_model)],
             errors={413: None, 422: None, 503: NO_ANSWER})
async def score_event(request: web.Request) -> web.Response:
    spec = pipeline_of(request)
    explain = _explain(request)
    try:
        event = parse(spec.event_type, await read_body(request))
    except InvalidRecord as exc:
        raise Invalid(exc.fields, "invalid event") from None
    score = await request.app[SCORERS][spec.name].score(event, explain)
    return web.json_response(score_body(spec, score), dumps=FINITE_JSON)


def _explain(request: web.Request) -> bool:
    """``?explain=false`` leaves the contributions out (one prediction per feature saved)."""
    value = request.query.get("explain", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise Invalid({"explain": "true or false"}, "invalid body")
    return value in ("true", "1")


def score_body(spec: PipelineSpec, score: Score) -> dict:
    """The JSON body of ``score``: :func:`serving.schemas.score_model` describes it (a unit
    test holds the two together)."""
    body = {
        "pipeline": spec.name,
        "event_id": score.event_id,
        "entity": score.entity,
        "prediction": score.prediction,
        "model_version": score.model_version,
        "variant": score.variant,
        "degraded": score.degraded,
        "contributions": [{"feature": c.feature, "value": c.value,
                           "contribution": c.contribution} for c in score.contributions],
        "features": score.features,
        "entity_known": score.entity_known,
    }
    if score.degraded:
        body["degraded_reason"] = score.degraded_reason
    if spec.task == "binary":
        body["probability"] = score.prediction
    return body
