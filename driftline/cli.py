"""The ``driftline`` command line."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

from driftline.adapters.config import Settings
from streams.pipelines import ENTRY_POINT_GROUP, PIPELINES, PipelineLoadError

if TYPE_CHECKING:
    from driftline.tools.deadletters import Selection


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.stack import LocalStack, StackError

    stack = LocalStack(settings)
    try:
        if args.action == "up":
            stack.up()
        elif args.action == "down":
            stack.down()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for status in stack.status():
        print(status.line())
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.kafka_admin import ensure_pipeline_topics, partition_counts

    made = [ensure_pipeline_topics(settings, pipeline) for pipeline in args.pipeline]
    # What the broker has, not what a default would give: existing inputs set the counts.
    counts = partition_counts(settings)
    for topics in made:
        for name in vars(topics).values():
            print(f"{name}\t{counts.get(name, '?')} partition(s)")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from agents.app import BoundedWorker, create_app
    from agents.faust_fixes import discard_state_after_crash, mark_clean_shutdown
    from driftline.adapters.kafka_admin import TopicLayoutError, ensure_pipeline_topics

    for pipeline in args.pipeline:
        ensure_pipeline_topics(settings, pipeline)
    state_dir = settings.data_dir / "worker" / settings.app_id
    discard_state_after_crash(state_dir)
    from monitoring.logs import dict_config

    try:
        app = create_app(settings, args.pipeline)
    except TopicLayoutError as exc:  # the operator's to mend; the message says how
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The model registry's first open (MLflow's import, its database's schema check) holds
    # the interpreter for seconds: before the worker consumes, not in its first seconds.
    for pipeline in app.driftline_pipelines:
        pipeline.swaps.open_registry()
    worker = BoundedWorker(app, loglevel=settings.log_level,
                           logging_config=dict_config(settings.log_level, settings.log_format,
                                                      settings.log_entities,
                                                      settings.log_entity_key),
                           shutdown_seconds=settings.shutdown_seconds)
    try:
        worker.execute_from_commandline()
    finally:  # reached on SIGTERM or SIGINT, never on a kill -9
        mark_clean_shutdown(state_dir)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.server import serve

    try:
        return serve(settings, args.host or settings.api_host, args.port or settings.api_port,
                     args.workers or settings.api_workers, insecure=args.insecure)
    except ValueError as exc:  # a malformed setting, or no tokens beyond loopback: named
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from serving.auth import new_token

    token, entry = new_token(args.name, args.role)
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print(f"entry for DRIFTLINE_API_TOKENS (comma-separated): {entry}")
    return 0


def _traffic(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from online_models.registry import Registry
    from serving.traffic import set_split

    registry = None if args.mode == "off" else Registry.from_settings(settings)
    try:
        split = asyncio.run(set_split(settings, registry, args.pipeline, args.mode,
                                      args.challenger, args.percent))
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.pipeline}: " + (f"traffic {split.model_dump()}" if split
                                  else "the champion serves all traffic"))
    return 0


def _retrainer(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.kafka_admin import ensure_pipeline_topics
    from online_models.retrainer import run_retrainer

    for pipeline in args.pipeline:
        ensure_pipeline_topics(settings, pipeline)
    run_retrainer(settings, args.pipeline)
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from online_models import lifecycle
    from online_models.registry import Registry

    if args.action == "retrain":
        lifecycle.request_retrain(settings, args.pipeline, requested_by="cli")
        print(f"{args.pipeline}: retrain requested")
        return 0
    registry = Registry.from_settings(settings)
    try:
        if args.action == "list":
            versions = registry.versions(args.pipeline)
            if args.json:
                print(json.dumps([v.to_dict() for v in versions], indent=2))
            for v in versions if not args.json else []:
                lin = v.lineage
                span = (f"offsets {lin.start_offset}-{lin.end_offset}"
                        if lin.start_offset is not None else "online model")
                figures = " ".join(f"{k}={x:.4f}" for k, x in sorted(v.metrics.items()))
                print(f"{'*' if v.champion else ' '} v{v.version:<3} {lin.reason:<9} "
                      f"parent={lin.parent} {lin.spec} {span} {figures}")
            if not versions:
                print(f"{args.pipeline}: no registered versions")
            return 0
        if args.action == "promote":
            if args.version is None:
                print("error: promote needs a version", file=sys.stderr)
                return 2
            champion = lifecycle.promote(settings, registry, args.pipeline, args.version)
        else:
            champion = lifecycle.rollback(settings, registry, args.pipeline)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.pipeline}: champion is now v{champion.version}; the learner swaps it in")
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.adapters.kafka_admin import ensure_pipeline_topics
    from driftline.tools.synthetic import produce
    from streams.generators import pipeline_history

    if PIPELINES[args.pipeline].generator is None:
        print(f"driftline: {args.pipeline} declares no generator: produce its events with "
              "a producer of your own (driftline init writes a sample, produce.py)",
              file=sys.stderr)
        return 2
    ensure_pipeline_topics(settings, args.pipeline)
    overrides = {} if args.label_delay is None else {"label_delay": args.label_delay}
    # The stream is replayed history ending now: `rate` events per wall-clock second, while
    # event time advances at the generator's own (slower, realistic) pace.
    config, emissions = pipeline_history(PIPELINES[args.pipeline], args.events, time.time(),
                                         seed=args.seed,
                                         run_id=args.run_id or uuid.uuid4().hex[:8], **overrides)
    report = produce(settings, args.pipeline, emissions,
                     speed=None if args.no_pace else args.rate / config.events_per_second,
                     malformed_every=args.malformed_every,
                     on_progress=lambda r: print(f"sent {r.events} events, {r.labels} labels "
                                                 f"({r.events_per_second:.0f} events/s)",
                                                 flush=True))
    print(f"done: {report.events} events, {report.labels} labels, {report.malformed} malformed "
          f"in {report.seconds:.1f}s ({report.events_per_second:.0f} events/s)")
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.replay import replay

    report = replay(settings, args.pipeline)
    print("\n".join(report.lines(args.show)))
    print("parity: OK" if report.ok else "parity: MISMATCH")
    return 0 if report.ok else 1


def _selection(args: argparse.Namespace) -> Selection | None:
    from driftline.tools.deadletters import Selection

    try:
        return Selection.parse(args.reason, args.since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _deadletter_list(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from driftline.tools.deadletters import Source, listing, reason_class

    if (selection := _selection(args)) is None:
        return 2
    listed = listing(settings, args.pipeline, selection)
    by_reason = Counter(reason_class(letter.error) for letter, _ in listed)
    if args.json:
        print(json.dumps({"letters": [{**letter.model_dump(), "status": status}
                                      for letter, status in listed],
                          "by_reason": dict(by_reason.most_common())}, indent=2))
        return 0
    for letter, status in listed[-args.last:] if args.last > 0 else listed:
        when = datetime.fromtimestamp(letter.at).astimezone().isoformat(timespec="seconds")
        print(f"{when}  {Source.of(letter)}  key={letter.key}  {status:<11} {letter.error}")
    statuses = ", ".join(f"{n} {s}" for s, n in Counter(s for _, s in listed).most_common())
    shown = f", the newest {args.last} shown" if 0 < args.last < len(listed) else ""
    print(f"{len(listed)} dead letter(s)" + (f" ({statuses}){shown}; by reason:" if listed
                                             else ""))
    for reason, n in by_reason.most_common():
        print(f"{n:>7}  {reason}")
    return 0


def _deadletter_replay(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.deadletters import replay

    if (selection := _selection(args)) is None:
        return 2
    try:
        report = replay(settings, args.pipeline, selection, internal=args.internal,
                        refailed=args.refailed)
    except RuntimeError as exc:  # Kafka refused a send; the ledger knows what went
        print(f"error: {exc}; run the replay again to finish it", file=sys.stderr)
        return 1
    if report.recovered:
        print(f"{report.recovered} sent back by an interrupted replay, found and marked")
    for why, n in report.skipped.most_common():
        print(f"left {n}: {why}")
    for topic, n in sorted(report.sent.items()):
        print(f"sent back {n} to {topic}")
    print(f"{sum(report.sent.values())} dead letter(s) replayed")
    return 0


def _init(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.scaffold import ScaffoldError, plan, write

    try:
        project = plan(args.directory, args.name, args.topic, args.labels_topic)
        written = write(project)
    except ScaffoldError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the {project.name} pipeline's project in {project.root}:")
    for path in written:
        print(f"  {path.relative_to(project.root)}")
    print(f"""then, in this environment, with the stack up:
  cd {project.root}
  python -m pytest                  # the features of a few events, as the worker computes them
  export DRIFTLINE_PIPELINES={project.module_path}
  driftline validate                # topics, features, model, policies
  driftline schema {project.name:<16} # the JSON a producer sends
  driftline worker --pipeline {project.name} &
  driftline serve &
  python produce.py                 # sample events, and their labels a few seconds later
(README.md says more.)""")
    return 0


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.declarations import describe, problems

    try:
        specs = dict(PIPELINES)
    except PipelineLoadError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1
    unknown = [name for name in args.pipeline if name not in specs]
    if unknown:
        print(f"driftline: no pipeline {', '.join(map(repr, unknown))}; declared: "
              f"{', '.join(sorted(specs))}", file=sys.stderr)
        return 1
    chosen = args.pipeline or sorted(specs)
    found = {name: problems(specs[name]) for name in chosen}
    for name in chosen:
        print(describe(specs[name], settings.namespace))
        for problem in found[name]:
            print(f"  PROBLEM      {problem}")
        print()
    wrong = [f"{name}: {problem}" for name, ps in found.items() for problem in ps]
    print(f"{len(chosen)} pipeline(s) " + (f"with {len(wrong)} problem(s)" if wrong else "valid")
          + f"; loaded from the entry points ({ENTRY_POINT_GROUP}) and "
          + (f"DRIFTLINE_PIPELINES={settings.pipelines}" if settings.pipelines
             else "no DRIFTLINE_PIPELINES")
          + f"; namespace: {settings.namespace or 'none'}")
    for line in wrong:
        print(f"driftline: {line}", file=sys.stderr)
    return 1 if wrong else 0


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from driftline.tools.declarations import json_schemas

    print(json.dumps(json_schemas(PIPELINES[args.pipeline]), indent=2))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.tools.demo import run_demo

    return run_demo(settings, pipeline=args.pipeline, seconds=args.seconds, rate=args.rate,
                    keep=args.keep)


# The commands that need the declared pipelines: a module that does not load stops them
# with its reason (exit 2) before they start.
NEEDS_PIPELINES = {"topics", "worker", "retrainer", "models", "serve", "traffic", "produce",
                   "replay", "deadletter", "demo", "schema"}


def _pipeline_names() -> list[str] | None:
    """The declared pipelines' names, for the parser's choices; None when a module does not
    load (the parser is still built: ``init``, ``stack`` or ``--help`` need no pipeline, and
    :func:`main` reports the reason to a command that does)."""
    try:
        return sorted(PIPELINES)
    except PipelineLoadError:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    names = _pipeline_names()

    p = sub.add_parser("stack", help="the local Kafka broker and Redis server")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

    p = sub.add_parser("topics", help="create a pipeline's topics")
    p.add_argument("pipeline", nargs="*", default=None,  # checked in main (choices refuse [])
                   help="default: every declared pipeline")
    p.set_defaults(func=_topics)

    p = sub.add_parser("worker", help="run the Faust stream worker")
    p.add_argument("--pipeline", action="append", default=None, choices=names,
                   help="a pipeline to run (repeatable; default: all declared)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("retrainer", help="run the retrainer: drift-triggered full retrains")
    p.add_argument("--pipeline", action="append", default=None, choices=names,
                   help="a pipeline to watch (repeatable; default: all declared)")
    p.set_defaults(func=_retrainer)

    p = sub.add_parser("models", help="the model registry: list, promote, rollback, retrain")
    p.add_argument("action", choices=["list", "promote", "rollback", "retrain"])
    p.add_argument("pipeline", choices=names)
    p.add_argument("version", type=int, nargs="?", help="the registry version to promote")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(func=_models)

    p = sub.add_parser("serve", help="run the scoring API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=None,
                   help="processes on the one port (default: DRIFTLINE_API_WORKERS, 1)")
    p.add_argument("--insecure", action="store_true",
                   help="serve beyond loopback without DRIFTLINE_API_TOKENS: anyone who "
                        "reaches the port may act as admin")
    p.set_defaults(func=_serve)

    p = sub.add_parser("token", help="make an API token and its DRIFTLINE_API_TOKENS entry")
    p.add_argument("--name", required=True, help="who holds it (shown in 403 answers)")
    p.add_argument("--role", choices=["scorer", "admin"], default="scorer")
    p.set_defaults(func=_token)

    p = sub.add_parser("traffic", help="serve a registry version as challenger: split "
                                       "(canary, A/B) or shadow; off ends it")
    p.add_argument("pipeline", choices=names)
    p.add_argument("mode", choices=["split", "shadow", "off"])
    p.add_argument("--challenger", type=int, help="the registry version (split, shadow)")
    p.add_argument("--percent", type=float, default=10.0,
                   help="split: the share of entities the challenger serves (default 10)")
    p.set_defaults(func=_traffic)

    p = sub.add_parser("produce", help="send a synthetic stream to Kafka")
    p.add_argument("pipeline", choices=names)
    p.add_argument("--rate", type=float, default=200.0, help="events per wall-clock second")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--label-delay", type=float, default=None,
                   help="seconds of event time before a label, plus jitter "
                        "(default: the generator's)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--run-id", help="prefix of event ids (random by default)")
    p.add_argument("--malformed-every", type=int, default=0,
                   help="send a malformed event after every K-th event")
    p.add_argument("--no-pace", action="store_true", help="send as fast as possible")
    p.set_defaults(func=_produce)

    p = sub.add_parser("replay", help="recompute features from the events topic and compare "
                                      "them with the training log (training-serving parity)")
    p.add_argument("pipeline", choices=names)
    p.add_argument("--show", type=int, default=20, help="differences to print")
    p.set_defaults(func=_replay)

    p = sub.add_parser("deadletter", help="the records the worker refused: list them, or "
                                          "send them back (each once) after a fix")
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("pipeline", choices=names)
    chosen.add_argument("--reason", help="a regular expression searched in the error "
                                         "(any case)")
    chosen.add_argument("--since", help="dead-lettered at or after: epoch seconds, an ISO "
                                        "time (local unless it names a zone) or a span back "
                                        "(90s, 10m, 2h, 1d)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", parents=[chosen], help="oldest first, then a count by "
                                                          "reason")
    q.add_argument("--json", action="store_true")
    q.add_argument("--last", type=int, default=0,
                   help="show only the newest N (the counts are of all)")
    q.set_defaults(func=_deadletter_list)
    q = actions.add_parser("replay", parents=[chosen], help="send the records back to their "
                                                            "source partitions, each once")
    q.add_argument("--refailed", action="store_true",
                   help="also letters of copies a replay sent back that failed again")
    q.add_argument("--internal", action="store_true",
                   help="also letters from the join, training and control topics, which "
                        "Driftline wrote itself (default: events and labels only)")
    q.set_defaults(func=_deadletter_replay)

    p = sub.add_parser("demo", help="run the whole pipeline for about a minute")
    p.add_argument("--pipeline", default="fraud", choices=names)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=None,
                   help="events per second (default: 200 for fraud, 100 for pricing)")
    p.add_argument("--keep", action="store_true", help="keep the demo's topics and Redis keys")
    p.set_defaults(func=_demo)

    p = sub.add_parser("init", help="write a project of your own declaring a pipeline: the "
                                    "module, a sample producer, a test, pyproject.toml")
    p.add_argument("directory", help="a new (or empty) directory")
    p.add_argument("--name", help="the pipeline's name (default: from the directory's)")
    p.add_argument("--topic", help="your existing events topic, used as named (default: "
                                   "<name>.events, under DRIFTLINE_NAMESPACE)")
    p.add_argument("--labels-topic", help="your existing labels topic (default: "
                                          "<name>.labels, under DRIFTLINE_NAMESPACE)")
    p.set_defaults(func=_init)

    p = sub.add_parser("validate", help="load the declared pipelines (DRIFTLINE_PIPELINES and "
                                        "the entry points), check them and print each: "
                                        "topics, features, model, policies")
    p.add_argument("pipeline", nargs="*", default=[], help="default: every declared one")
    p.set_defaults(func=_validate)

    p = sub.add_parser("schema", help="the JSON Schema of a pipeline's events and labels "
                                      "(what a producer sends)")
    p.add_argument("pipeline", choices=names)
    p.set_defaults(func=_schema)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in NEEDS_PIPELINES:
        try:
            declared = sorted(PIPELINES)
        except PipelineLoadError as exc:
            print(f"driftline: {exc}", file=sys.stderr)
            sys.exit(2)
        if args.command in ("topics", "worker", "retrainer") and not args.pipeline:
            args.pipeline = declared
        if args.command == "topics" and (unknown := set(args.pipeline) - set(declared)):
            parser.error(f"unknown pipeline(s) {sorted(unknown)}; declared: {declared}")
    sys.exit(args.func(args, Settings.from_env()))
