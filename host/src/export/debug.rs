//! The debug exporter (`exporters.debug`): one summary line per kept trace on stdout.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::SendError;
use crate::tags::{ATTR_COMPLETENESS, ATTR_FAIL_OPEN, ATTR_LATE, ATTR_MISSING, ATTR_POLICY};

/// Prints summaries.
#[derive(Debug)]
pub struct DebugExporter;

#[derive(Default)]
struct Summary {
    spans: usize,
    root: Option<(String, String)>,
    policy: String,
    completeness: String,
    missing: Vec<String>,
    late: usize,
    fail_open: bool,
}

impl DebugExporter {
    /// Prints one line per trace in the request.
    pub fn send(&mut self, body: &Bytes) -> Result<(), SendError> {
        let req = ExportTraceServiceRequest::decode(body.as_ref())
            .map_err(|e| SendError::Permanent(format!("re-reading our own request: {e}")))?;
        let mut traces: BTreeMap<Vec<u8>, Summary> = BTreeMap::new();
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    _ => String::new(),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let t = traces.entry(span.trace_id.clone()).or_default();
                t.spans += 1;
                if span.parent_span_id.is_empty() {
                    t.root = Some((service.clone(), span.name.clone()));
                }
                for a in &span.attributes {
                    let v = a.value.as_ref().and_then(|v| v.value.as_ref());
                    match (a.key.as_str(), v) {
                        (ATTR_POLICY, Some(Value::StringValue(s))) => t.policy = s.clone(),
                        (ATTR_COMPLETENESS, Some(Value::StringValue(s))) => {
                            t.completeness = s.clone()
                        }
                        (ATTR_MISSING, Some(Value::ArrayValue(arr))) if t.missing.is_empty() => {
                            t.missing = arr
                                .values
                                .iter()
                                .filter_map(|v| match &v.value {
                                    Some(Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .collect();
                        }
                        (ATTR_LATE, Some(Value::BoolValue(true))) => t.late += 1,
                        (ATTR_FAIL_OPEN, Some(Value::BoolValue(true))) => t.fail_open = true,
                        _ => {}
                    }
                }
            }
        }
        let mut out = std::io::stdout().lock();
        for (id, t) in traces {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let root = t
                .root
                .map(|(s, n)| format!("{s}: {n}"))
                .unwrap_or_else(|| "-".into());
            let mut line = format!(
                "kept trace_id={hex} spans={} root={root:?} policy={} completeness={}",
                t.spans, t.policy, t.completeness
            );
            if !t.missing.is_empty() {
                line.push_str(&format!(" missing={:?}", t.missing));
            }
            if t.late > 0 {
                line.push_str(&format!(" late_spans={}", t.late));
            }
            if t.fail_open {
                line.push_str(" fail_open=true");
            }
            writeln!(out, "{line}")
                .map_err(|e| SendError::Retryable(format!("stdout: {e}"), None))?;
        }
        out.flush()
            .map_err(|e| SendError::Retryable(format!("stdout: {e}"), None))
    }
}
