//! OTLP JSON (the official encoding: camelCase keys, hex ids, integer enums, 64-bit integers as
//! strings) to protobuf, so JSON requests take the same path as protobuf ones.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Converts an OTLP JSON request body to protobuf bytes. Absurd nesting is refused by
/// serde_json's recursion limit (128 levels) before it can exhaust the stack.
pub fn json_to_protobuf(body: &[u8]) -> Result<Vec<u8>, String> {
    let req: ExportTraceServiceRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON: {e}"))?;
    Ok(req.encode_to_vec())
}

/// The response body for a request with `rejected` spans (0 → empty success).
pub fn response(rejected: u64, message: &str) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message.to_string(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn official_json_encoding_is_read() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
          "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
          "spanId":"eee19b7ec3c1b174","parentSpanId":"","name":"GET /","kind":2,
          "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
          "status":{"code":2}}]}]}]}"#;
        let pb = json_to_protobuf(body).unwrap();
        let parsed = crate::otlp::request::parse_request(&pb).unwrap();
        assert_eq!(parsed.spans.len(), 1);
        let s = parsed.spans[0].info;
        assert_eq!(s.trace_id.to_string(), "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.kind, 2);
        assert_eq!(s.status_code, 2);
        assert_eq!(s.start_unix_nano, 1544712660000000000);
        assert!(json_to_protobuf(b"{\"resourceSpans\": [").is_err());
        assert!(json_to_protobuf(b"[1,2]").is_err());
    }
}
