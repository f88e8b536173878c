"""A bare Faust agent: read a topic from its start, json-decode each value, keep no state.

    python benchmarks/peer_faust.py --topic NS.fraud.events --events 30000 \\
        --app-id NS.bare-faust --port 6099 --datadir /tmp/faust --result /tmp/faust.json

The floor under the Driftline worker, which is a Faust application too: the same library
(faust-streaming), the same consumer (aiokafka), one agent, no tables, no Redis, no model.
Started by ``benchmarks/ingest.py`` as a child process with an app id (its consumer group)
of its own, so it reads the backlog cold; when it has read ``--events`` values it writes
``--result`` (JSON: wall time and CPU seconds from its first value to its last) and keeps
running until the parent stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faust


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (as ``benchmarks/ingest.py`` reads it)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--app-id", required=True, help="also its consumer group")
    parser.add_argument("--port", type=int, required=True, help="Faust's web port")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--datadir", type=Path, required=True, help="Faust's own files")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()

    started = time.time()
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        datadir=str(args.datadir),
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=True,  # its own leader topic; the existing topic is kept as is
        web_host="127.0.0.1",
        web_port=args.port,
    )
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    seen = {"n": 0}

    @app.agent(topic)
    async def read(values) -> None:
        async for value in values:
            json.loads(value)
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"], seen["first_cpu"] = time.time(), time.process_time()
                seen["first_busy"] = machine_busy()
            elif seen["n"] == args.events:
                done, cpu, busy = time.time(), time.process_time(), machine_busy()
                partial = args.result.with_suffix(".partial")
                partial.write_text(json.dumps({
                    "events": seen["n"], "started": started, "first": seen["first"],
                    "done": done, "cpu_seconds": cpu - seen["first_cpu"],
                    "machine_busy_seconds": busy - seen["first_busy"]}))
                partial.replace(args.result)  # whole, or not there

    faust.Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main()
