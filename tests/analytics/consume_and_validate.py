#!/usr/bin/env python3
"""Reads Ridehail's public event topics the way an analytics team would: with an independent Kafka
client (confluent-kafka), in a consumer group of its own, and with nothing of Ridehail but the JSON
schemas in `schemas/`.

Usage:

  consume_and_validate.py validate --brokers HOST:PORT --topics TOPIC[,TOPIC...] --group GROUP \\
      --min-messages N --timeout SECONDS --schemas DIR [--idle SECONDS]

      Consumes every topic from the earliest offset and checks every record:
        - the value is JSON and valid against `DIR/events/**/<Type>.v<version>.json`, picked by the
          record's `ridehail-type` and `ridehail-schema-version` headers (a type or version without a
          schema file is invalid), with the `uuid`, `date-time` and integer-width formats checked;
        - the headers `ridehail-type`, `ridehail-schema-version`, `ridehail-correlation-id`,
          `ridehail-causation-id` and `content-type: application/json` are present, once each, and
          equal the envelope's fields; `traceparent`, when present, is W3C trace context;
        - the key equals the envelope's `aggregate_id`;
        - the topic is the one the schema names (the physical name ends with it: namespaces prefix);
        - no two different events claim the same sequence number of one aggregate.
      Stops once it has read at least N records and none arrived for `--idle` seconds (a high
      watermark cannot end the read: some brokers, tansu among them, understate it), or at the
      timeout. Commits no offsets.

      Prints one JSON summary on stdout:
        {"messages": int, "valid": int, "by_type": {type: count}, "invalid": [{topic, partition,
         offset, key, type, errors: [...]}], "duplicates": int, "sequence_gaps": [...],
         "timed_out": bool}
      `duplicates` counts redeliveries of one event id (at-least-once: allowed); `sequence_gaps`
      lists aggregates whose published sequence numbers skip some (informational).
      Exit status: 0 when every record is valid and at least N were read, 1 otherwise, 2 when the
      run could not start (unknown topic, unreadable schemas).

  consume_and_validate.py publish-tampered --brokers HOST:PORT --source-topic TOPIC \\
      --target-topic TOPIC --group GROUP --timeout SECONDS

      Test aid for checking the validator itself: reads one record from the source topic and
      publishes to the target topic (created with one partition) an unchanged copy followed by copies
      each broken in one way. Prints {"cases": [{"case": name, "partition": int, "offset": int}]}.
      A `validate` run over the target topic must find the unchanged copy valid and each other one
      invalid.
"""

import argparse
import datetime
import json
import re
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from jsonschema import FormatChecker
from jsonschema.validators import validator_for

TYPE_HEADER = "ridehail-type"
VERSION_HEADER = "ridehail-schema-version"
CORRELATION_HEADER = "ridehail-correlation-id"
CAUSATION_HEADER = "ridehail-causation-id"
CONTENT_TYPE_HEADER = "content-type"
TRACEPARENT_HEADER = "traceparent"
REQUIRED_HEADERS = (TYPE_HEADER, VERSION_HEADER, CORRELATION_HEADER, CAUSATION_HEADER, CONTENT_TYPE_HEADER)
JSON_CONTENT_TYPE = "application/json"

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$"
)
INTEGER_FORMAT = re.compile(r"^(u?)int(8|16|32|64)$")

# Errors kept per record, so one very broken record cannot flood the summary.
MAX_ERRORS_PER_RECORD = 10


# --------------------------------------------------------------------------------------- schemas

def format_checker():
    """The standard checker plus the formats Ridehail's schemas use that it leaves unchecked here:
    `date-time` (RFC 3339; the stock check needs an extra package) and schemars' integer widths."""
    checker = FormatChecker()

    @checker.checks("date-time")
    def is_rfc3339(value):
        if not isinstance(value, str):
            return True
        m = RFC3339.match(value)
        if not m:
            return False
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        try:
            datetime.datetime(year, month, day, hour, minute, min(second, 59))
        except ValueError:
            return False
        if second > 60 or (m.group(9) and (int(m.group(9)) > 23 or int(m.group(10)) > 59)):
            return False
        return True

    def integer_width(unsigned, bits):
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)

        def check(value):
            if isinstance(value, bool) or not isinstance(value, int):
                return True  # `type` judges non-integers.
            return low <= value <= high

        return check

    for unsigned in ("", "u"):
        for bits in (8, 16, 32, 64):
            checker.checks(f"{unsigned}int{bits}")(integer_width(unsigned == "u", bits))
    return checker


class Schema:
    def __init__(self, path, schema, checker):
        self.path = path
        cls = validator_for(schema)
        cls.check_schema(schema)
        self.validator = cls(schema, format_checker=checker)
        # The generated description names the topic: "... on topic ridehail.ride.events, key = ...".
        m = re.search(r"on topic (\S+?),", schema.get("description", ""))
        self.topic = m.group(1) if m else None


def load_schemas(schemas_dir):
    """Every event schema under `schemas_dir/events`, by (event type, schema version) as the schema
    itself pins them."""
    root = Path(schemas_dir) / "events"
    files = sorted(root.rglob("*.json"))
    if not files:
        raise SystemExit(f"no event schemas under {root}")
    checker = format_checker()
    schemas = {}
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        props = schema.get("properties", {})
        try:
            key = (props["event_type"]["const"], props["schema_version"]["const"])
        except (KeyError, TypeError):
            raise SystemExit(f"{path}: does not pin event_type and schema_version with `const`")
        if key in schemas:
            raise SystemExit(f"{path}: {key[0]} v{key[1]} is also described by {schemas[key].path}")
        schemas[key] = Schema(path, schema, checker)
    return schemas


# --------------------------------------------------------------------------------------- checks

def decode_headers(raw):
    """Headers as {name: [values]}, values decoded as UTF-8 (undecodable ones kept as None)."""
    headers = {}
    for name, value in raw or []:
        try:
            text = None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        headers.setdefault(name, []).append(text)
    return headers


def check_record(msg, schemas):
    """Returns (type name or None, envelope or None, list of errors) for one consumed record."""
    errors = []
    headers = decode_headers(msg.headers())
    single = {}
    for name in REQUIRED_HEADERS:
        values = headers.get(name, [])
        if not values:
            errors.append(f"missing header {name}")
        elif len(values) > 1:
            errors.append(f"header {name} appears {len(values)} times")
        elif values[0] is None:
            errors.append(f"header {name} is not UTF-8")
        else:
            single[name] = values[0]
    if CONTENT_TYPE_HEADER in single and single[CONTENT_TYPE_HEADER] != JSON_CONTENT_TYPE:
        errors.append(f"header {CONTENT_TYPE_HEADER} is {single[CONTENT_TYPE_HEADER]!r}, not {JSON_CONTENT_TYPE}")
    for value in headers.get(TRACEPARENT_HEADER, []):
        if value is None or not TRACEPARENT.match(value):
            errors.append(f"header {TRACEPARENT_HEADER} is not W3C trace context: {value!r}")

    header_type = single.get(TYPE_HEADER)
    header_version = single.get(VERSION_HEADER)
    version = None
    if header_version is not None:
        if re.fullmatch(r"[0-9]+", header_version):
            version = int(header_version)
        else:
            errors.append(f"header {VERSION_HEADER} is not an integer: {header_version!r}")

    envelope = None
    if msg.value() is None:
        errors.append("no value (tombstone)")
    else:
        try:
            envelope = json.loads(msg.value().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            errors.append(f"value is not JSON: {e}")
    if envelope is not None and not isinstance(envelope, dict):
        errors.append(f"value is a JSON {type(envelope).__name__}, not an object")
        envelope = None

    type_name = header_type
    if envelope is not None:
        # Without usable headers the envelope's own fields still pick a schema, so its errors show.
        if type_name is None:
            type_name = envelope.get("event_type") if isinstance(envelope.get("event_type"), str) else None
        if version is None and header_version is None and isinstance(envelope.get("schema_version"), int):
            version = envelope["schema_version"]

        schema = schemas.get((type_name, version))
        if type_name is not None and version is not None and schema is None:
            errors.append(f"no schema for {type_name} v{version}")
        if schema is not None:
            for error in sorted(schema.validator.iter_errors(envelope), key=lambda e: list(e.absolute_path)):
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                errors.append(f"schema {schema.path.name}: {where}: {error.message[:200]}")
            if schema.topic is not None and not msg.topic().endswith(schema.topic):
                errors.append(f"{type_name} belongs on {schema.topic}, found on {msg.topic()}")

        for header, field in (
            (TYPE_HEADER, "event_type"),
            (VERSION_HEADER, "schema_version"),
            (CORRELATION_HEADER, "correlation_id"),
            (CAUSATION_HEADER, "causation_id"),
        ):
            if header in single and single[header] != str(envelope.get(field)):
                errors.append(f"header {header}={single[header]!r} but envelope {field}={envelope.get(field)!r}")

        key = msg.key()
        try:
            key_text = None if key is None else key.decode("utf-8")
        except UnicodeDecodeError:
            key_text = None
        if key_text != envelope.get("aggregate_id"):
            errors.append(f"key {key!r} is not the envelope's aggregate_id {envelope.get('aggregate_id')!r}")

    if len(errors) > MAX_ERRORS_PER_RECORD:
        errors = errors[:MAX_ERRORS_PER_RECORD] + [f"... and {len(errors) - MAX_ERRORS_PER_RECORD} more"]
    return type_name, envelope, errors


class Sequences:
    """Per aggregate: which event holds each sequence number."""

    def __init__(self):
        self.events = {}
        self.duplicates = 0

    def add(self, envelope):
        """Returns an error when a different event already holds this sequence number."""
        aggregate, sequence, event_id = (envelope.get(k) for k in ("aggregate_id", "sequence", "event_id"))
        if not isinstance(aggregate, str) or not isinstance(sequence, int) or not isinstance(event_id, str):
            return None  # Already reported by the schema.
        held = self.events.setdefault(aggregate, {})
        if sequence in held and held[sequence] != event_id:
            return f"sequence {sequence} of {aggregate} is already event {held[sequence]}"
        if sequence in held:
            self.duplicates += 1
        held[sequence] = event_id
        return None

    def gaps(self):
        out = []
        for aggregate, held in sorted(self.events.items()):
            seen = sorted(held)
            missing = [n for n in range(1, seen[-1] + 1) if n not in held]
            if missing:
                out.append({"aggregate_id": aggregate, "missing": missing})
        return out


# --------------------------------------------------------------------------------------- kafka

def consumer(brokers, group):
    return Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "client.id": "analytics-check",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # The group coordinator may hold the first JoinGroup on the scale of the session timeout
            # (tansu: about half of it) waiting for other members; a short one starts the read sooner.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
        }
    )


def require_topics(client, topics, timeout):
    for topic in topics:
        meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise SystemExit(f"topic {topic} is not readable: {meta.error if meta else 'absent'}")


def validate(args):
    schemas = load_schemas(args.schemas)
    topics = [t for t in args.topics.split(",") if t]
    c = consumer(args.brokers, args.group)
    require_topics(c, topics, args.timeout)
    c.subscribe(topics)

    summary = {"messages": 0, "valid": 0, "by_type": {}, "invalid": [], "duplicates": 0, "sequence_gaps": []}
    client_errors = []
    sequences = Sequences()
    deadline = time.monotonic() + args.timeout
    last_record = time.monotonic()
    timed_out = False
    try:
        while True:
            now = time.monotonic()
            if summary["messages"] >= args.min_messages and now - last_record >= args.idle:
                break
            if now >= deadline:
                timed_out = True
                break
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                client_errors.append(str(msg.error()))
                if msg.error().fatal() or len(client_errors) > 20:
                    break
                continue
            last_record = time.monotonic()
            type_name, envelope, errors = check_record(msg, schemas)
            if envelope is not None:
                clash = sequences.add(envelope)
                if clash:
                    errors.append(clash)
            summary["messages"] += 1
            label = type_name if type_name is not None else "(unknown)"
            summary["by_type"][label] = summary["by_type"].get(label, 0) + 1
            if errors:
                key = msg.key()
                summary["invalid"].append(
                    {
                        "topic": msg.topic(),
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "key": key.decode("utf-8", "replace") if key is not None else None,
                        "type": type_name,
                        "errors": errors,
                    }
                )
            else:
                summary["valid"] += 1
    finally:
        c.close()

    summary["duplicates"] = sequences.duplicates
    summary["sequence_gaps"] = sequences.gaps()
    summary["timed_out"] = timed_out
    if client_errors:
        summary["client_errors"] = client_errors
    print(json.dumps(summary, sort_keys=True))
    ok = not summary["invalid"] and not client_errors and summary["messages"] >= args.min_messages
    return 0 if ok else 1


# --------------------------------------------------------------------------------------- self-check aid

def tampered_copies(key, headers, value):
    """(case, key, headers, value): an unchanged copy first, then one defect per copy."""
    envelope = json.loads(value)

    def with_envelope(**changes):
        copy = dict(envelope)
        copy.update(changes)
        return json.dumps(copy).encode("utf-8")

    def with_header(name, new):
        out = [(n, v) for n, v in headers if n != name]
        return out if new is None else out + [(name, new.encode("utf-8"))]

    extra_field = dict(envelope["payload"], unexpected_field=1)
    return [
        ("unchanged", key, headers, value),
        ("payload-unknown-field", key, headers, with_envelope(payload=extra_field)),
        ("occurred-at-not-a-time", key, headers, with_envelope(occurred_at="yesterday")),
        (
            "internal-type-without-schema",
            key,
            with_header(TYPE_HEADER, "PasswordSet"),
            with_envelope(event_type="PasswordSet", payload={"password_hash": "x"}),
        ),
        ("key-not-aggregate-id", str(uuid.uuid4()).encode("utf-8"), headers, value),
        ("correlation-header-missing", key, with_header(CORRELATION_HEADER, None), value),
        (
            "version-header-disagrees",
            key,
            with_header(VERSION_HEADER, str(envelope["schema_version"] + 1)),
            value,
        ),
        ("value-not-json", key, headers, b"{not json"),
    ]


def publish_tampered(args):
    c = consumer(args.brokers, args.group)
    require_topics(c, [args.source_topic], args.timeout)
    c.subscribe([args.source_topic])
    deadline = time.monotonic() + args.timeout
    source = None
    try:
        while source is None and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                source = msg
    finally:
        c.close()
    if source is None:
        raise SystemExit(f"no record on {args.source_topic} within {args.timeout} s")

    admin = AdminClient({"bootstrap.servers": args.brokers})
    for future in admin.create_topics([NewTopic(args.target_topic, 1, 1)]).values():
        try:
            future.result(timeout=args.timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})
    cases, failures = [], []

    def delivered(case):
        def report(err, msg):
            if err is not None:
                failures.append(f"{case}: {err}")
            else:
                cases.append({"case": case, "partition": msg.partition(), "offset": msg.offset()})

        return report

    for case, key, headers, value in tampered_copies(source.key(), source.headers() or [], source.value()):
        producer.produce(args.target_topic, key=key, value=value, headers=headers, on_delivery=delivered(case))
        # One at a time, so the copies land in case order.
        if producer.flush(args.timeout) != 0:
            raise SystemExit(f"{case} still unpublished after {args.timeout} s")
    if failures:
        raise SystemExit(f"publishing failed: {failures}")
    print(json.dumps({"source": {"topic": source.topic(), "offset": source.offset()}, "cases": cases}))
    return 0


# --------------------------------------------------------------------------------------- main

def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    v = sub.add_parser("validate", help="consume and validate every record")
    v.add_argument("--brokers", required=True)
    v.add_argument("--topics", required=True, help="physical topic names, comma-separated")
    v.add_argument("--group", required=True, help="a consumer group of this check's own")
    v.add_argument("--min-messages", type=int, required=True)
    v.add_argument("--timeout", type=float, required=True, help="seconds for the whole read")
    v.add_argument("--schemas", required=True, help="the schemas/ directory")
    v.add_argument("--idle", type=float, default=3.0, help="seconds without records that end the read")

    t = sub.add_parser("publish-tampered", help="publish broken copies of a real record (test aid)")
    t.add_argument("--brokers", required=True)
    t.add_argument("--source-topic", required=True)
    t.add_argument("--target-topic", required=True)
    t.add_argument("--group", required=True)
    t.add_argument("--timeout", type=float, required=True)

    args = parser.parse_args(argv)
    try:
        return validate(args) if args.mode == "validate" else publish_tampered(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(f"consume_and_validate: {e.code}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
