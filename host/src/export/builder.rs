//! Puts kept spans back under their resource and scope and encodes an
//! `ExportTraceServiceRequest` directly from the span bytes.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::otlp::request::Group;
use crate::otlp::wire::{put_len_field, put_len_header};
use crate::tags::TraceTags;

/// The encoded `spans` fields under one scope (keyed by the scope's encoded fields).
type ScopeSlot = (Vec<u8>, Vec<u8>);

/// Accumulates tagged spans, grouped by resource then scope.
#[derive(Debug, Default)]
pub struct ExportBuilder {
    /// Resource fields → index into `resources`.
    by_resource: HashMap<Vec<u8>, usize>,
    /// Per resource: its fields, and per scope (by scope fields) the encoded `spans` fields.
    resources: Vec<(Vec<u8>, Vec<ScopeSlot>)>,
    /// Group address → (the group, resource index, scope index), to skip the lookups for
    /// repeat groups. Holding the `Arc` keeps the address from being reused while it is a key.
    by_group: HashMap<usize, (Arc<Group>, usize, usize)>,
    spans: usize,
}

impl ExportBuilder {
    /// An empty request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of spans added.
    pub fn span_count(&self) -> usize {
        self.spans
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    fn slot(&mut self, group: &Arc<Group>) -> (usize, usize) {
        let key = Arc::as_ptr(group) as usize;
        if let Some((_, r, s)) = self.by_group.get(&key) {
            return (*r, *s);
        }
        let r = match self.by_resource.get(&group.resource_fields) {
            Some(&r) => r,
            None => {
                self.resources
                    .push((group.resource_fields.clone(), Vec::new()));
                let r = self.resources.len() - 1;
                self.by_resource.insert(group.resource_fields.clone(), r);
                r
            }
        };
        let scopes = &mut self.resources[r].1;
        let s = match scopes.iter().position(|(f, _)| *f == group.scope_fields) {
            Some(s) => s,
            None => {
                scopes.push((group.scope_fields.clone(), Vec::new()));
                scopes.len() - 1
            }
        };
        self.by_group.insert(key, (Arc::clone(group), r, s));
        (r, s)
    }

    /// Adds one span with its trace's tags.
    pub fn add(&mut self, group: &Arc<Group>, span: &[u8], tags: &TraceTags, late: bool) {
        let (r, s) = self.slot(group);
        tags.write_span(&mut self.resources[r].1[s].1, span, late);
        self.spans += 1;
    }

    /// Encodes the request and empties the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for (resource_fields, scopes) in self.resources.drain(..) {
            let mut rs = resource_fields;
            for (scope_fields, spans) in scopes {
                put_len_header(&mut rs, 2, scope_fields.len() + spans.len());
                rs.extend_from_slice(&scope_fields);
                rs.extend_from_slice(&spans);
            }
            put_len_field(&mut out, 1, &rs);
        }
        self.by_resource.clear();
        self.by_group.clear();
        self.spans = 0;
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::otlp::request::parse_request;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn rs(service: &str, scopes: &[(&str, &[u8])]) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                    key: "service.name".into(),
                    key_strindex: 0,
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                service.into(),
                            ),
                        ),
                    }),
                }],
                ..Default::default()
            }),
            scope_spans: scopes
                .iter()
                .map(|(name, ids)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: (*name).into(),
                        ..Default::default()
                    }),
                    spans: ids
                        .iter()
                        .map(|i| Span {
                            trace_id: vec![1; 16],
                            span_id: vec![*i; 8],
                            name: format!("s{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }
    }

    #[test]
    fn regroups_under_resource_and_scope() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                rs("a", &[("lib1", &[1, 2]), ("lib2", &[3])]),
                rs("b", &[("lib1", &[4])]),
            ],
        };
        let body = req.encode_to_vec();
        let parsed = parse_request(&body).unwrap();
        let tags = TraceTags::fail_open();
        let mut b = ExportBuilder::new();
        // Add in a scrambled order; the output regroups them.
        for i in [3usize, 0, 2, 1] {
            let s = &parsed.spans[i];
            b.add(&parsed.groups[s.group], s.bytes, &tags, false);
        }
        assert_eq!(b.span_count(), 4);
        let out = ExportTraceServiceRequest::decode(&b.finish()[..]).unwrap();
        assert!(b.is_empty());
        assert_eq!(out.resource_spans.len(), 2);
        let ids = |r: &ResourceSpans| -> Vec<(String, Vec<u8>)> {
            r.scope_spans
                .iter()
                .flat_map(|s| {
                    s.spans.iter().map(move |sp| {
                        (s.scope.as_ref().unwrap().name.clone(), vec![sp.span_id[0]])
                    })
                })
                .collect()
        };
        let b_res = &out.resource_spans[0];
        assert_eq!(ids(b_res), vec![("lib1".to_string(), vec![4])]);
        let a_res = &out.resource_spans[1];
        assert_eq!(a_res.schema_url, "https://opentelemetry.io/schemas/1.26.0");
        let mut a_ids = ids(a_res);
        a_ids.sort();
        assert_eq!(
            a_ids,
            vec![
                ("lib1".to_string(), vec![1]),
                ("lib1".to_string(), vec![2]),
                ("lib2".to_string(), vec![3])
            ]
        );
        let attr_keys: Vec<_> = a_res.scope_spans[0].spans[0]
            .attributes
            .iter()
            .map(|a| a.key.clone())
            .collect();
        assert_eq!(attr_keys, vec!["tracekeeper.fail_open".to_string()]);
    }
}
