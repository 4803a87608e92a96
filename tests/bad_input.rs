//! End-to-end tests of how the real `tracekeeper` binary answers bad requests on its OTLP/HTTP
//! and OTLP/gRPC receivers, rejects invalid span ids through partial success, and keeps serving a
//! good client while another one sends garbage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

/// The OTLP/HTTP body limit configured for these hosts (bytes, after decompression).
const BODY_LIMIT: u64 = 64 * 1024;
/// The OTLP/gRPC message limit configured for these hosts (MiB).
const GRPC_LIMIT_MIB: u64 = 1;

/// A receiver and a host exporting to it, with small request limits.
fn start() -> (Receiver, Host) {
    let receiver = Receiver::start();
    let host = Host::start(
        &HostConfig::new(Exporter::Otlp(receiver.port))
            .decision_wait("1s")
            .max_request_body_size(BODY_LIMIT)
            .max_recv_msg_size_mib(GRPC_LIMIT_MIB),
    );
    (receiver, host)
}

/// Asserts the host is alive, ready, and still turns a good error trace into exported spans.
fn assert_still_serving(receiver: &Receiver, host: &mut Host) {
    host.assert_healthy();
    let (request, sent) = error_trace("after-bad-input", "check", 2);
    runtime()
        .block_on(grpc_export(host.ports.grpc, request))
        .expect("a good gRPC export after bad input");
    let received = receiver.wait_for(&sent.keys(), "a good trace sent after the bad input", host);
    assert_kept(&received, &sent, "errors", "complete");
}

/// A valid request whose encoding is larger than `bytes` (one span with a big attribute).
fn big_request(bytes: usize) -> ExportTraceServiceRequest {
    let (mut request, _) = error_trace("big", "big-scope", 1);
    let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
    span.attributes.push(kv("blob", &"a".repeat(bytes)));
    request
}

/// A good request, cut short in the middle of a length-delimited field.
fn truncated_protobuf() -> Vec<u8> {
    let (request, _) = error_trace("truncated", "scope", 3);
    let mut bytes = request.encode_to_vec();
    bytes.truncate(bytes.len() - 7);
    assert!(
        ExportTraceServiceRequest::decode(bytes.as_slice()).is_err(),
        "the truncated body must not decode"
    );
    bytes
}

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
const JSON: (&str, &str) = ("content-type", "application/json");

fn post(host: &Host, headers: &[(&str, &str)], body: Vec<u8>) -> HttpAnswer {
    http_post(&http_client(), &host.http_url("/v1/traces"), headers, body).unwrap_or_else(|e| {
        panic!(
            "POST /v1/traces failed: {e}\n--- host stderr ---\n{}",
            host.stderr()
        )
    })
}

#[test]
fn truncated_protobuf_is_400() {
    let (receiver, mut host) = start();
    let answer = post(&host, &[PROTOBUF], truncated_protobuf());
    assert_eq!(answer.status, 400, "truncated protobuf: {answer:?}");
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn invalid_json_is_400() {
    let (receiver, mut host) = start();
    for body in [
        &b"{\"resourceSpans\":[{\"scopeSpans\":"[..],
        b"this is not json",
        b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":\"zz-not-hex\"}]}]}]}",
    ] {
        let answer = post(&host, &[JSON], body.to_vec());
        assert_eq!(
            answer.status,
            400,
            "invalid JSON {:?}: {answer:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn wrong_content_type_is_415() {
    let (receiver, mut host) = start();
    let (request, sent) = error_trace("plain", "scope", 1);
    let answer = post(
        &host,
        &[("content-type", "text/plain")],
        request.encode_to_vec(),
    );
    assert_eq!(answer.status, 415, "text/plain: {answer:?}");
    assert_still_serving(&receiver, &mut host);
    host.terminate_cleanly();
    assert_absent(
        &receiver.spans(),
        &sent.trace_id,
        "a trace posted as text/plain",
    );
}

#[test]
fn body_over_limit_is_413() {
    let (receiver, mut host) = start();
    let body = big_request(3 * BODY_LIMIT as usize).encode_to_vec();
    assert!(body.len() as u64 > BODY_LIMIT);
    let answer = post(&host, &[PROTOBUF], body);
    assert_eq!(
        answer.status,
        413,
        "a {} byte body over a {BODY_LIMIT} byte limit: {answer:?}",
        3 * BODY_LIMIT
    );
    // Just under the limit is fine.
    let body = big_request(BODY_LIMIT as usize - 1024).encode_to_vec();
    assert!((body.len() as u64) < BODY_LIMIT);
    let answer = post(&host, &[PROTOBUF], body);
    assert_eq!(answer.status, 200, "a body under the limit: {answer:?}");
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn gzip_body_inflating_over_limit_is_413() {
    let (receiver, mut host) = start();
    // A valid request that compresses far below the limit but inflates to four times it: only the
    // limit on the decompressed size can reject it.
    let body = gzip(&big_request(4 * BODY_LIMIT as usize).encode_to_vec());
    assert!((body.len() as u64) < BODY_LIMIT / 4);
    let answer = post(&host, &[PROTOBUF, ("content-encoding", "gzip")], body);
    assert_eq!(
        answer.status, 413,
        "a gzip body inflating over the limit: {answer:?}"
    );
    // A gzip body within the limit is accepted.
    let (request, sent) = error_trace("gzip-ok", "scope", 2);
    let answer = post(
        &host,
        &[PROTOBUF, ("content-encoding", "gzip")],
        gzip(&request.encode_to_vec()),
    );
    assert_eq!(answer.status, 200, "a small gzip body: {answer:?}");
    let received = receiver.wait_for(&sent.keys(), "the gzip-compressed good trace", &host);
    assert_kept(&received, &sent, "errors", "complete");
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn wrong_method_is_405_and_unknown_path_is_404() {
    let (receiver, mut host) = start();
    let client = http_client();
    let get = client
        .get(host.http_url("/v1/traces"))
        .send()
        .expect("GET /v1/traces");
    assert_eq!(get.status().as_u16(), 405, "GET /v1/traces");
    let (request, _) = error_trace("nowhere", "scope", 1);
    let answer = http_post(
        &client,
        &host.http_url("/v1/nothing"),
        &[PROTOBUF],
        request.encode_to_vec(),
    )
    .expect("POST to an unknown path");
    assert_eq!(answer.status, 404, "POST /v1/nothing: {answer:?}");
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn grpc_undecodable_message_is_invalid_argument() {
    let (receiver, mut host) = start();
    let rt = runtime();
    for message in [
        vec![0x0a, 0xff],
        truncated_protobuf(),
        b"\xff\xff\xff\xff garbage".to_vec(),
    ] {
        let status = rt
            .block_on(grpc_export_raw(host.ports.grpc, message.clone()))
            .expect_err("an undecodable gRPC message must fail");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "undecodable message {message:02x?}: {status:?}"
        );
    }
    assert_still_serving(&receiver, &mut host);
}

#[test]
fn grpc_message_over_limit_is_rejected() {
    let (receiver, mut host) = start();
    let request = big_request(2 * 1024 * 1024 * GRPC_LIMIT_MIB as usize);
    let status = runtime()
        .block_on(grpc_export(host.ports.grpc, request))
        .expect_err("a message over max_recv_msg_size_mib must fail");
    eprintln!(
        "gRPC message over the limit answered {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(
            status.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "a message over the limit: {status:?}"
    );
    assert_still_serving(&receiver, &mut host);
}

/// Spans with invalid ids are rejected through `partial_success.rejected_spans`; the valid spans
/// of the same request are accepted and come out.
#[test]
fn invalid_ids_are_rejected_through_partial_success() {
    let (receiver, mut host) = start();
    let rt = runtime();

    // gRPC: one span with an all-zero trace id, one good error span.
    let good_tid = new_trace_id();
    let good_sid = new_span_id();
    let spans = vec![
        span(&[0u8; 16], &new_span_id(), None, "zero trace id", true),
        span(&good_tid, &good_sid, None, "good", true),
    ];
    let response = rt
        .block_on(grpc_export(
            host.ports.grpc,
            request("ids-grpc", "scope", spans),
        ))
        .expect("gRPC export with one invalid span");
    let rejected = response.partial_success.map(|p| p.rejected_spans);
    assert_eq!(rejected, Some(1), "gRPC partial success: {rejected:?}");
    let mut grpc_good = SentTrace::new(good_tid);
    grpc_good.add(good_sid, "ids-grpc", "scope");

    // HTTP protobuf: a trace id of the wrong length, an all-zero span id, one good error span.
    let good_tid = new_trace_id();
    let good_sid = new_span_id();
    let spans = vec![
        span(
            &new_trace_id()[..8],
            &new_span_id(),
            None,
            "short trace id",
            true,
        ),
        span(&new_trace_id(), &[0u8; 8], None, "zero span id", true),
        span(&good_tid, &good_sid, None, "good", true),
    ];
    let answer = post(
        &host,
        &[PROTOBUF],
        request("ids-http", "scope", spans).encode_to_vec(),
    );
    assert_eq!(
        answer.status, 200,
        "a partly valid request is a success: {answer:?}"
    );
    let response =
        ExportTraceServiceResponse::decode(answer.body.as_slice()).expect("protobuf response");
    let rejected = response.partial_success.map(|p| p.rejected_spans);
    assert_eq!(rejected, Some(2), "HTTP partial success: {rejected:?}");
    let mut http_good = SentTrace::new(good_tid);
    http_good.add(good_sid, "ids-http", "scope");

    let mut keys = grpc_good.keys();
    keys.extend(http_good.keys());
    receiver.wait_for(&keys, "the valid spans of partly rejected requests", &host);
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_kept(&received, &grpc_good, "errors", "complete");
    assert_kept(&received, &http_good, "errors", "complete");
    for r in &received {
        assert!(
            r.span.trace_id.len() == 16
                && r.span.trace_id != [0u8; 16]
                && r.span.span_id != [0u8; 8],
            "a span with an invalid id came out: {:?}",
            r.span.name
        );
    }
}

/// While one thread sends a stream of bad requests over HTTP and gRPC, a good client's spans all
/// come out, each exactly once, and every bad request gets its 4xx or gRPC error.
#[test]
fn good_client_unaffected_by_concurrent_bad_requests() {
    /// Upper bound on the bad requests sent, whatever happens.
    const MAX_BAD: usize = 2_000;
    const GOOD_REQUESTS: usize = 20;
    const SPANS_PER_TRACE: usize = 5;

    let (receiver, mut host) = start();
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));

    let bad = {
        let stop = stop.clone();
        let url = host.http_url("/v1/traces");
        let grpc_port = host.ports.grpc;
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let client = http_client();
            let truncated = truncated_protobuf();
            let oversized = big_request(2 * BODY_LIMIT as usize).encode_to_vec();
            let bomb = gzip(&big_request(4 * BODY_LIMIT as usize).encode_to_vec());
            let mut unexpected = Vec::new();
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < MAX_BAD {
                let kind = sent % 6;
                sent += 1;
                let outcome = match kind {
                    0 => http_post(&client, &url, &[PROTOBUF], truncated.clone())
                        .map(|a| (a.status, 400)),
                    1 => http_post(&client, &url, &[JSON], b"{\"resourceSpans\":[".to_vec())
                        .map(|a| (a.status, 400)),
                    2 => http_post(
                        &client,
                        &url,
                        &[("content-type", "text/plain")],
                        b"hello".to_vec(),
                    )
                    .map(|a| (a.status, 415)),
                    3 => http_post(&client, &url, &[PROTOBUF], oversized.clone())
                        .map(|a| (a.status, 413)),
                    4 => http_post(
                        &client,
                        &url,
                        &[PROTOBUF, ("content-encoding", "gzip")],
                        bomb.clone(),
                    )
                    .map(|a| (a.status, 413)),
                    _ => {
                        match handle.block_on(grpc_export_raw(grpc_port, vec![0x0a, 0xff])) {
                            Err(status) if status.code() == tonic::Code::InvalidArgument => {}
                            other => unexpected.push(format!("gRPC garbage answered {other:?}")),
                        }
                        continue;
                    }
                };
                match outcome {
                    Ok((got, want)) if got == want => {}
                    Ok((got, want)) => {
                        unexpected.push(format!("bad request kind {kind}: {got}, expected {want}"))
                    }
                    Err(e) => unexpected.push(format!("bad request kind {kind}: {e}")),
                }
            }
            (sent, unexpected)
        })
    };

    let client = http_client();
    let mut traces = Vec::new();
    for i in 0..GOOD_REQUESTS {
        let (request, sent) = error_trace("good-client", "good-scope", SPANS_PER_TRACE);
        if i % 2 == 0 {
            let response = rt
                .block_on(grpc_export(host.ports.grpc, request))
                .unwrap_or_else(|e| panic!("good gRPC request {i} failed: {e:?}"));
            assert!(
                response
                    .partial_success
                    .is_none_or(|p| p.rejected_spans == 0)
            );
        } else {
            let answer = http_post(
                &client,
                &host.http_url("/v1/traces"),
                &[PROTOBUF],
                request.encode_to_vec(),
            )
            .unwrap_or_else(|e| panic!("good HTTP request {i} failed: {e}"));
            assert_eq!(answer.status, 200, "good HTTP request {i}: {answer:?}");
        }
        traces.push(sent);
    }
    let keys: Vec<_> = traces.iter().flat_map(SentTrace::keys).collect();
    receiver.wait_for(&keys, "the good client's spans", &host);

    stop.store(true, Ordering::Relaxed);
    let (bad_sent, unexpected) = bad.join().expect("the bad client thread");
    eprintln!("the bad client sent {bad_sent} requests meanwhile");
    assert!(bad_sent > 0, "the bad client sent nothing");
    assert!(
        unexpected.is_empty(),
        "{} of {bad_sent} bad requests got an unexpected answer, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    host.assert_healthy();
    host.terminate_cleanly();
    let received = receiver.spans();
    let counts = count_by_key(&received);
    for key in &keys {
        assert_eq!(
            counts.get(key).copied().unwrap_or(0),
            1,
            "span {}/{} of the good client should come out exactly once",
            hex(&key.0),
            hex(&key.1)
        );
    }
    for trace in &traces {
        assert_kept(&received, trace, "errors", "complete");
    }
}
