#!/usr/bin/env python3
"""Writes the small seed corpora of the fuzz targets into corpus/<target>/ (checked in).

The seeds are hand-encoded (protobuf wire format, the span-view and decision layouts of
wit/README.md, gzip, YAML), so that making them needs no build. Run from fuzz/:
    python3 make_seeds.py
"""
import gzip
import json
import os
import struct


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_len(n, payload):
    return varint(n << 3 | 2) + varint(len(payload)) + payload


def field_varint(n, v):
    return varint(n << 3 | 0) + varint(v)


def field_fixed64(n, v):
    return varint(n << 3 | 1) + struct.pack("<Q", v)


def field_fixed32(n, v):
    return varint(n << 3 | 5) + struct.pack("<I", v)


def any_str(s):
    return field_len(1, s.encode())


def any_int(i):
    return field_varint(3, i & 0xFFFFFFFFFFFFFFFF)


def any_array(items):
    return field_len(5, b"".join(field_len(1, v) for v in items))


def any_kvlist(kvs):
    return field_len(6, b"".join(field_len(1, kv(k, v)) for k, v in kvs))


def kv(key, value):
    return field_len(1, key.encode()) + field_len(2, value)


def span(trace, sid, parent, name, kind=1, status=0, attrs=(), events=(), links=(), state=""):
    out = field_len(1, trace) + field_len(2, sid)
    if state:
        out += field_len(3, state.encode())
    if parent:
        out += field_len(4, parent)
    out += field_len(5, name.encode()) + field_varint(6, kind)
    out += field_fixed64(7, 1_700_000_000_000_000_000) + field_fixed64(8, 1_700_000_000_500_000_000)
    for k, v in attrs:
        out += field_len(9, kv(k, v))
    for ev in events:
        out += field_len(11, ev)
    for ln in links:
        out += field_len(13, ln)
    if status:
        out += field_len(15, field_len(2, b"boom") + field_varint(3, status))
    out += field_fixed32(16, 1)
    return out


def request(spans, service="checkout"):
    resource = field_len(1, kv("service.name", any_str(service)))
    scope = field_len(1, b"lib") + field_len(2, b"1.0") + field_len(3, kv("scope.attr", any_int(7)))
    ss = field_len(1, scope) + b"".join(field_len(2, s) for s in spans) + field_len(3, b"https://schema")
    rs = field_len(1, resource) + field_len(2, ss) + field_len(3, b"https://schema")
    return field_len(1, rs)


T1 = bytes(range(1, 17))
S1, S2, S3 = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def protobuf_seeds():
    event = field_fixed64(1, 1_700_000_000_100_000_000) + field_len(2, b"exception") + field_len(
        3, kv("exception.type", any_str("E")))
    link = field_len(1, T1[::-1]) + field_len(2, S3) + field_len(3, b"") + field_fixed32(6, 1)
    root = span(T1, S1, None, "POST /checkout", kind=2, attrs=[
        ("http.status_code", any_int(500)),
        ("tags", any_array([any_str("a"), any_int(-1)])),
        ("nested", any_kvlist([("k", any_str("v")), ("deep", any_array([any_kvlist([("x", any_int(1))])]))])),
    ], state="ot=th:8")
    child = span(T1, S2, S1, "publish order_confirmed", kind=4, status=2, events=[event], links=[link])
    return {
        "two_spans": request([root, child]),
        "one_span": request([span(T1, S3, S1, "send_email")], service="mailer"),
        "invalid_ids": request([span(b"\x00" * 16, S1, None, "zero"), span(T1[:8], S2, None, "short"),
                                span(T1, S3, b"\x09" * 4, "bad parent")]),
        "empty": b"",
    }


def json_seeds():
    sp = {"traceId": T1.hex(), "spanId": S1.hex(), "parentSpanId": "", "name": "GET /", "kind": 2,
          "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
          "attributes": [{"key": "a", "value": {"arrayValue": {"values": [{"intValue": "5"}, {"kvlistValue": {
              "values": [{"key": "b", "value": {"boolValue": True}}]}}]}}}],
          "events": [{"timeUnixNano": "1544712660500000000", "name": "e"}],
          "links": [{"traceId": T1.hex(), "spanId": S2.hex()}],
          "status": {"code": 2, "message": "boom"}}
    req = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]},
                              "scopeSpans": [{"scope": {"name": "lib"}, "spans": [sp]}]}]}
    return {"request.json": json.dumps(req).encode(), "empty.json": b"{}"}


def gzip_seeds():
    body = protobuf_seeds()["two_spans"]
    return {
        "one_member": b"\x00" + gzip.compress(body, mtime=0),
        "two_members": b"\x01" + gzip.compress(body, mtime=0) + gzip.compress(b"tail", mtime=0),
        "zeros": b"\x03" + gzip.compress(b"\x00" * 100000, mtime=0),
    }


def put_bytes(b):
    return struct.pack("<I", len(b)) + b


def section(count, payload):
    return struct.pack("<II", count, len(payload)) + payload


def span_view_seeds():
    head = b"TKB1" + struct.pack("<HH", 1, 0)
    res = b"\x01" + section(1, struct.pack("<H", 0) + b"\x01" + put_bytes(b"checkout"))
    fixed = T1 + S2 + S1 + struct.pack("<QQIIBBBB", 10, 20, 99, 0, 4, 2, 1, 0)
    arr = b"\x06" + section(2, b"\x02\x01" + b"\x04" + struct.pack("<d", 1.5))
    kvl = b"\x07" + section(1, struct.pack("<H", 0xFFFF) + put_bytes(b"k") + b"\x03" + struct.pack("<q", -5))
    attrs = section(3, struct.pack("<H", 0xFFFF) + put_bytes(b"n") + arr
                    + struct.pack("<H", 1) + kvl + struct.pack("<H", 2) + b"\x05" + put_bytes(b"\xff\x00"))
    links = section(1, T1 + S3)
    events = section(1, put_bytes(b"exception") + struct.pack("<Q", 15)
                     + section(1, struct.pack("<H", 0xFFFF) + put_bytes(b"exception.type") + b"\x01" + put_bytes(b"E")))
    sp = b"\x02" + fixed + put_bytes(b"publish") + put_bytes(b"ot=th:8") + attrs + links + events
    return {"batch": head + res + sp, "header_only": head}


def decision_seeds():
    def record(decision, completeness, op, th, policy, missing, extra):
        out = T1 + bytes([decision, completeness, op, 0]) + struct.pack("<Q", th) + put_bytes(policy)
        out += struct.pack("<H", len(missing)) + b"".join(put_bytes(m) for m in missing)
        out += struct.pack("<H", len(extra)) + b"".join(put_bytes(k) + put_bytes(v) for k, v in extra)
        return out

    recs = [record(1, 1, 0, 0, b"incomplete", [b"root", b"parent:0101010101010101"], []),
            record(1, 0, 1, 1 << 52, b"baseline", [], [(b"x", b"y")]),
            record(0, 0, 2, 0, b"", [], [])]
    plain = b"TKD1" + struct.pack("<HHIQ", 1, 0, len(recs), 123) + b"".join(recs)
    queues = put_bytes(b"rabbitmq") + put_bytes(b"orders") + struct.pack("<QQQQ", 3, 2, 0, 5)
    roots = put_bytes(b"checkout") + put_bytes(b"POST /checkout") + struct.pack("<QQQQ", 9, 1, 9, 1)
    metrics = struct.pack("<I", 1) + put_bytes(queues) + struct.pack("<I", 1) + put_bytes(roots)
    with_metrics = b"TKD1" + struct.pack("<HHIQ", 1, 1, 1, 0) + recs[0] + metrics
    return {"records": plain, "with_metrics": with_metrics}


def config_seeds():
    with open("../host/src/default_config.yaml", "rb") as f:
        default = f.read()
    full = b"""receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:4317", max_recv_msg_size_mib: 4}
      http: {endpoint: "127.0.0.1:4318", max_request_body_size: 1048576}
processors:
  tail_sampling:
    decision_wait: 10s
    num_traces: 1000
    decision_cache: {sampled_cache_size: 10, non_sampled_cache_size: 10}
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
  completeness:
    consumer_wait: 30s
exporters:
  otlp: {endpoint: "127.0.0.1:4317", tls: {insecure: true}, compression: gzip, timeout: 5s, headers: {a: b}}
extensions:
  health_check: {endpoint: "127.0.0.1:13133"}
service:
  telemetry: {metrics: {address: "127.0.0.1:8888"}, logs: {level: info, encoding: json}}
  shutdown_timeout: 10s
guest: {memory_limit_mib: 64, call_timeout: 2s}
"""
    env = b"exporters: {otlphttp: {endpoint: \"http://${env:HOST}:4318\", headers: {x: $$y}}}\n" \
          b"receivers: {otlp: {protocols: {http: }}}\n"
    return {"default.yaml": default, "full.yaml": full, "env.yaml": env}


if __name__ == "__main__":
    for target, seeds in [("otlp_protobuf", protobuf_seeds()), ("otlp_json", json_seeds()),
                          ("gzip_body", gzip_seeds()), ("span_view", span_view_seeds()),
                          ("decision_batch", decision_seeds()), ("config_file", config_seeds())]:
        for name, data in seeds.items():
            write(target, name, data)
