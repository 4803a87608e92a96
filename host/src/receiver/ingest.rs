//! Turning a request body into [`IngestBatch`]es for the workers: checked and split by the wire
//! walker, each span routed to the worker its trace id maps to (with its links routed as
//! `crate::shard` describes), span views built for the guest, queued with backpressure.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backpressure::{Delivery, MAX_QUEUED_BYTES, Pressure, QueuedBytes, Refusal, enqueue};
use crate::otlp::request::parse_request_with;
use crate::otlp::view::{Interest, ViewBuilder};
use crate::shard::{ShardStates, shard_of};
use crate::telemetry::{Metrics, ProtocolLabel, ReasonLabel};
use crate::worker::{BatchSpan, IngestBatch, WorkerMsg};

/// What a request came to.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Spans refused for invalid ids (partial success).
    pub rejected: u64,
    /// Why, for the partial-success message.
    pub message: String,
}

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not a valid `ExportTraceServiceRequest` (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    Malformed(String),
    /// The worker is gone (shutting down): 503 / UNAVAILABLE.
    #[error("tracekeeper is shutting down")]
    Unavailable,
    /// The pipeline is full: 503 with Retry-After / UNAVAILABLE with RetryInfo.
    #[error("{}", Refusal::Busy)]
    Busy,
}

/// One worker's queue and "full" flag.
#[derive(Debug, Clone)]
pub struct WorkerQueue {
    /// The worker's queue.
    pub tx: mpsc::Sender<WorkerMsg>,
    /// Raised by the worker at its limits with `block_on_overflow`.
    pub pressure: Arc<Pressure>,
}

/// The receivers' handle on the pipeline.
#[derive(Debug, Clone)]
pub struct Ingest {
    workers: Arc<[WorkerQueue]>,
    interest: Arc<RwLock<Arc<Interest>>>,
    metrics: Arc<Metrics>,
    states: Arc<ShardStates>,
    queued: Arc<QueuedBytes>,
}

/// What one worker gets of a request.
#[derive(Default)]
struct Part {
    view: ViewBuilder,
    spans: Vec<BatchSpan>,
    /// Views of other workers' spans that link into this worker's traces.
    links: Option<ViewBuilder>,
}

impl Ingest {
    /// A handle sending to the workers' queues (at least one; trace ids are mapped to them by
    /// [`shard_of`]).
    pub fn new(
        workers: Vec<WorkerQueue>,
        interest: Arc<RwLock<Arc<Interest>>>,
        metrics: Arc<Metrics>,
        states: Arc<ShardStates>,
    ) -> Self {
        Ingest {
            workers: workers.into(),
            interest,
            metrics,
            states,
            queued: QueuedBytes::new(MAX_QUEUED_BYTES),
        }
    }

    /// Checks and splits an encoded request, builds the guest's views of its spans, and queues
    /// each worker's part of it (waiting while a queue is full; all parts or none).
    pub async fn submit(
        &self,
        body: Bytes,
        protocol: &'static str,
    ) -> Result<Accepted, IngestError> {
        let count = u32::try_from(self.workers.len()).unwrap_or(u32::MAX);
        let Some(ticket) = self.queued.try_acquire(body.len()) else {
            self.metrics
                .requests_refused
                .get_or_create(&ReasonLabel {
                    reason: "queued_bytes",
                })
                .inc();
            return Err(IngestError::Busy);
        };
        let ticket = Arc::new(ticket);
        let (parts, accepted) = {
            let interest = match self.interest.read() {
                Ok(i) => Arc::clone(&i),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            };
            // The walk that checks the request also picks the attributes the guest wants.
            let parsed = parse_request_with(&body, &interest)
                .map_err(|e| IngestError::Malformed(e.to_string()))?;
            let mut parts: Vec<Part> = (0..self.workers.len()).map(|_| Part::default()).collect();
            for s in &parsed.spans {
                let Some(group) = parsed.groups.get(s.group) else {
                    continue;
                };
                let picks = parsed.picks_of(s);
                let owner = shard_of(&s.info.trace_id, count);
                let Some(part) = parts.get_mut(owner as usize) else {
                    continue;
                };
                // Bit k: a link points into a trace of worker k (not the owner).
                let mut elsewhere = 0u64;
                if count == 1 || !interest.wants_links() {
                    part.view
                        .add_picked(&interest, group, s.bytes, &s.info, picks, |_| true);
                } else {
                    part.view
                        .add_picked(&interest, group, s.bytes, &s.info, picks, |t| {
                            let k = shard_of(t, count);
                            elsewhere |= 1u64 << (k % 64);
                            k == owner
                        });
                    elsewhere &= !(1u64 << (owner % 64));
                }
                part.spans.push(BatchSpan {
                    trace_id: s.info.trace_id,
                    group: s.group as u32,
                    range: range_in(&body, s.bytes),
                });
                while elsewhere != 0 {
                    let k = elsewhere.trailing_zeros();
                    elsewhere &= elsewhere - 1;
                    if let Some(p) = parts.get_mut(k as usize) {
                        p.links.get_or_insert_with(ViewBuilder::new).add_picked(
                            &interest,
                            group,
                            s.bytes,
                            &s.info,
                            picks,
                            |t| shard_of(t, count) == k,
                        );
                    }
                }
            }
            let accepted = Accepted {
                rejected: parsed.rejected,
                message: parsed.reject_reason.unwrap_or_default(),
            };
            let groups = parsed.groups;
            let parts: Vec<(u32, IngestBatch)> = parts
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.spans.is_empty() || p.links.is_some())
                .map(|(k, p)| {
                    (
                        k as u32,
                        IngestBatch {
                            view: p.view.into_bytes(),
                            spans: p.spans,
                            body: body.clone(),
                            groups: groups.clone(),
                            links: p.links.map(ViewBuilder::into_bytes).unwrap_or_default(),
                            ticket: Some(Arc::clone(&ticket)),
                        },
                    )
                })
                .collect();
            (parts, accepted)
        };
        let n: u64 = parts.iter().map(|(_, b)| b.spans.len() as u64).sum();
        if accepted.rejected > 0 {
            self.metrics.drop_spans("invalid", accepted.rejected);
        }
        if !parts.is_empty() {
            let deliveries = parts
                .into_iter()
                .filter_map(|(k, batch)| {
                    let w = self.workers.get(k as usize)?;
                    Some(Delivery {
                        shard: k,
                        tx: &w.tx,
                        pressure: &w.pressure,
                        msg: WorkerMsg::Batch(batch),
                    })
                })
                .collect();
            enqueue(deliveries, &self.metrics, &self.states)
                .await
                .map_err(|r| match r {
                    Refusal::Busy => IngestError::Busy,
                    Refusal::Closed => IngestError::Unavailable,
                })?;
        }
        if n > 0 {
            self.metrics
                .spans_received
                .get_or_create(&ProtocolLabel { protocol })
                .inc_by(n);
        }
        Ok(accepted)
    }
}

/// Where `part`, a slice of `body`, is in it (by address: the wire walker hands out sub-slices
/// of the body it was given).
fn range_in(body: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let range = start..start.saturating_add(part.len());
    debug_assert!(
        body.get(range.clone())
            .is_some_and(|b| b.as_ptr() == part.as_ptr())
    );
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_found_where_it_is_in_the_body() {
        let body = Bytes::from_static(b"resource|span one|span two");
        for (start, end) in [(9, 17), (18, 26), (0, 0), (26, 26), (0, 26)] {
            let range = range_in(&body, &body[start..end]);
            assert_eq!(range, start..end);
            assert_eq!(&body[range], &body[start..end]);
        }
    }
}
