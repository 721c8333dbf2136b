"""Reads every topic of a snapfeed pipeline with tools that are not snapfeed's: the
confluent-kafka consumer (librdkafka through Confluent's Python client); fastavro for values
in the default framing, given only the schema files `<service> schemas --out DIR` wrote; and
Confluent's own AvroDeserializer with its SchemaRegistryClient for values in the Confluent
wire format (with --registry). Proves both framings are standard:
- single-object: C3 01 + the CRC-64-AVRO fingerprint (computed here by fastavro from the
  schema file, not taken from its name) + the Avro body;
- registry: 00 + the 4-byte schema id + the Avro body, decoded by AvroDeserializer with the
  schema the registry holds under that id (checked to be one of the exported schemas).
The nested dataset record is an ordinary record whose fields equal what the generator wrote
(EXPECTED, written by the Rust test from the generator's typed values).

Usage: read_topics.py --bootstrap HOST:PORT --schemas DIR --expected FILE.json
       [--registry URL] TOPIC...
Exit 0 with a one-line summary per topic; 1 naming the first message that fails (topic,
partition, offset, field) — never a value, these are health-data shaped.
"""

import argparse
import datetime
import glob
import io
import json
import sys
import time

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

EPOCH_DATE = datetime.date(1970, 1, 1)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def load_schemas(directory):
    """Every schema file, by the fingerprint fastavro computes for it."""
    schemas = {}
    for path in sorted(glob.glob(f"{directory}/*.avsc")):
        with open(path) as f:
            parsed = parse_schema(json.load(f), _write_hint=False)
        canonical = to_parsing_canonical_form(parsed)
        schemas[bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))] = parsed
    if not schemas:
        fail(f"no .avsc files in {directory}")
    return schemas


def plain(value):
    """A fastavro value as the expected JSON has it: dates as days since 1970-01-01,
    timestamps as milliseconds."""
    if isinstance(value, datetime.datetime):
        return round((value - EPOCH).total_seconds() * 1000)
    if isinstance(value, datetime.date):
        return (value - EPOCH_DATE).days
    return value


def read_topic(bootstrap, topic):
    """Every message of `topic`, from the beginning to each partition's end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "snapfeed-interop-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # Transactional topics: what a read_committed application reads.
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    at_eof = set()
    messages = []
    deadline = time.monotonic() + 60
    while len(at_eof) < len(partitions):
        if time.monotonic() > deadline:
            fail(f"{topic}: partition EOF not reached within 60 s")
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_eof.add(message.partition())
            continue
        messages.append(message)
    consumer.close()
    return messages


def header(message, name):
    for key, value in message.headers() or []:
        if key == name and value is not None:
            return value.decode()
    return None


def check_record(where, record, expected):
    if expected is None:
        fail(f"{where}: no generated row for this key in this file")
    if set(record) != set(expected):
        fail(f"{where}: fields {sorted(set(record) ^ set(expected))} differ in presence")
    for field, value in expected.items():
        if plain(record[field]) != value:
            fail(f"{where}: field {field} is not what the generator wrote")


def schema_fingerprint(parsed):
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class Decoder:
    """Both framings: fastavro for single-object values, AvroDeserializer for registry ones."""

    def __init__(self, schemas, registry_url):
        self.schemas = schemas
        self.registry = SchemaRegistryClient({"url": registry_url}) if registry_url else None
        self.deserializer = AvroDeserializer(self.registry) if self.registry else None
        self.names_by_id = {}

    def decode(self, where, topic, value):
        """(framing, schema full name, datum)."""
        if value[:2] == b"\xc3\x01":
            schema = self.schemas.get(value[2:10])
            if schema is None:
                fail(f"{where}: fingerprint {value[2:10].hex()} matches no exported schema")
            body = io.BytesIO(value[10:])
            datum = fastavro.schemaless_reader(body, schema, None)
            if body.tell() != len(value) - 10:
                fail(f"{where}: {len(value) - 10 - body.tell()} bytes left after the datum")
            return "single_object", schema["name"], datum
        if value[:1] == b"\x00" and len(value) >= 5:
            if self.deserializer is None:
                fail(f"{where}: registry-framed value (00 + id) but no --registry given")
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self.names_by_id:
                registered = self.registry.get_schema(schema_id)
                parsed = parse_schema(json.loads(registered.schema_str), _write_hint=False)
                if schema_fingerprint(parsed) not in self.schemas:
                    fail(f"{where}: registry schema {schema_id} is none of the exported schemas")
                self.names_by_id[schema_id] = parsed["name"]
            datum = self.deserializer(value, SerializationContext(topic, MessageField.VALUE))
            return "registry", self.names_by_id[schema_id], datum
        fail(f"{where}: value starts with neither C3 01 (single-object) nor 00 (registry)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--schemas", required=True)
    parser.add_argument("--expected", required=True)
    parser.add_argument("--registry")
    parser.add_argument("topics", nargs="+")
    args = parser.parse_args()
    schemas = load_schemas(args.schemas)
    decoder = Decoder(schemas, args.registry)
    with open(args.expected) as f:
        expected = json.load(f)
    dataset = expected["dataset"]
    rows = expected["files"]

    compared = 0
    nested_letters = 0
    for topic in args.topics:
        counts = {}
        framings = {}
        for message in read_topic(args.bootstrap, topic):
            where = f"{topic}/{message.partition()}@{message.offset()}"
            key = None
            if message.key() is not None:
                try:
                    key = message.key().decode("utf-8")
                except UnicodeDecodeError:
                    fail(f"{where}: key is not UTF-8")
            value = message.value()
            if value is None:
                counts["tombstone"] = counts.get("tombstone", 0) + 1
                continue
            framing, name, datum = decoder.decode(where, topic, value)
            framings[framing] = framings.get(framing, 0) + 1
            counts[name] = counts.get(name, 0) + 1
            if name == dataset:
                file_name = header(message, "snapfeed-file-name")
                check_record(where, datum, rows.get(file_name, {}).get(key))
                compared += 1
            elif name == "snapfeed.ChangeEvent":
                if datum["key"] != key:
                    fail(f"{where}: event key is not the message key")
                if (datum["record"] is None) != (datum["op"] == "DELETE"):
                    fail(f"{where}: a {datum['op']} with record {datum['record'] is not None}")
                if datum["record"] is not None:
                    file_name = datum["source"]["file_name"]
                    check_record(where + " record", datum["record"],
                                 rows.get(file_name, {}).get(key))
                    compared += 1
            elif name == "snapfeed.DeadLetter" and datum.get("event") is not None:
                event = datum["event"]
                if event["record"] is not None:
                    check_record(where + " event.record", event["record"],
                                 rows.get(event["source"]["file_name"], {}).get(event["key"]))
                    compared += 1
                    nested_letters += 1
        summary = ", ".join(f"{n} {c}" for n, c in sorted(counts.items()))
        framing = ", ".join(f"{n} {c}" for n, c in sorted(framings.items()))
        print(f"{topic}: {summary or 'empty'} (framing: {framing or 'none'})")
    print(f"records compared field by field with the generator: {compared}")
    print(f"dead letters with their record nested: {nested_letters}")
    if compared == 0:
        fail("no dataset record was compared")


if __name__ == "__main__":
    main()
