//! Turning a request body into an [`IngestBatch`] for the worker: checked and split by the wire
//! walker, span views built for the guest, queued with backpressure.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backpressure::{Pressure, Refusal, enqueue};
use crate::otlp::request::parse_request;
use crate::otlp::view::{Interest, ViewBuilder};
use crate::telemetry::{Metrics, ProtocolLabel};
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

/// The receivers' handle on the pipeline.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<WorkerMsg>,
    interest: Arc<RwLock<Arc<Interest>>>,
    metrics: Arc<Metrics>,
    pressure: Arc<Pressure>,
}

impl Ingest {
    /// A handle sending to the worker's queue.
    pub fn new(
        tx: mpsc::Sender<WorkerMsg>,
        interest: Arc<RwLock<Arc<Interest>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ingest {
            tx,
            interest,
            metrics,
            pressure: Arc::new(Pressure::default()),
        }
    }

    /// Refuses requests (retryable) while the worker's "full" flag is raised.
    pub fn with_pressure(mut self, pressure: Arc<Pressure>) -> Self {
        self.pressure = pressure;
        self
    }

    /// Checks and splits an encoded request, builds the guest's views of its spans, and queues
    /// it for the worker (waiting while the queue is full).
    pub async fn submit(
        &self,
        body: Bytes,
        protocol: &'static str,
    ) -> Result<Accepted, IngestError> {
        let batch = {
            let parsed = parse_request(&body).map_err(|e| IngestError::Malformed(e.to_string()))?;
            let interest = match self.interest.read() {
                Ok(i) => Arc::clone(&i),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            };
            let mut view = ViewBuilder::new();
            let mut spans = Vec::with_capacity(parsed.spans.len());
            for s in &parsed.spans {
                let Some(group) = parsed.groups.get(s.group) else {
                    continue;
                };
                view.add(&interest, group, s.bytes, &s.info);
                spans.push(BatchSpan {
                    trace_id: s.info.trace_id,
                    group: s.group as u32,
                    bytes: body.slice_ref(s.bytes),
                });
            }
            let accepted = Accepted {
                rejected: parsed.rejected,
                message: parsed.reject_reason.unwrap_or_default(),
            };
            (
                IngestBatch {
                    view: view.into_bytes(),
                    spans,
                    groups: parsed.groups,
                },
                accepted,
            )
        };
        let (batch, accepted) = batch;
        let n = batch.spans.len() as u64;
        if accepted.rejected > 0 {
            self.metrics.drop_spans("invalid", accepted.rejected);
        }
        if n > 0 {
            enqueue(
                &self.tx,
                &self.pressure,
                &self.metrics,
                WorkerMsg::Batch(batch),
            )
            .await
            .map_err(|r| match r {
                Refusal::Busy => IngestError::Busy,
                Refusal::Closed => IngestError::Unavailable,
            })?;
            self.metrics
                .spans_received
                .get_or_create(&ProtocolLabel { protocol })
                .inc_by(n);
        }
        Ok(accepted)
    }
}
