//! The sampler: per-trace state keyed by trace id, the due-time queue, and the decision of due
//! traces. This is everything the component does, callable natively (tests, the host's
//! `validate` command) as well as from wasm.

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use tracekeeper_abi::{BatchReader, DecisionWriter, LayoutError, Record, SpanView, TraceId};

use crate::completeness::{self, Tracker};
use crate::config::ProcessorsConfig;
use crate::interest::Interest;
use crate::policy::predicate::BatchScope;
use crate::policy::{Engine, TraceFacts, engine};
use crate::schedule::{DueQueue, Lane};
use crate::trace::PendingTrace;

/// Length of a trace id in a `decide-now` list.
pub const TRACE_ID_LEN: usize = 16;

/// The default tracekeeper sampler.
///
/// Time is the host's clock in Unix nanoseconds, passed to every call; the sampler has no clock
/// of its own. Once decided, a trace is forgotten: spans of it that arrive later are the host's
/// business (decision cache), and if they are ingested anyway they start a new trace.
#[derive(Debug)]
pub struct Sampler {
    config: ProcessorsConfig,
    engine: Engine,
    /// Boxed: hashbrown grows its table when deletions leave it short of free slots while more
    /// than half full (a steady churn of 50 000 pending traces doubled a table of inline
    /// `PendingTrace`s, +13 MB, measured natively); boxed, the table holds 8 + 16 bytes per slot
    /// (wasm32) and the doubling costs little.
    traces: HashMap<TraceId, Box<PendingTrace>>,
    queue: DueQueue,
    decision_wait: u64,
    wait_after_root: Option<u64>,
    completeness: Tracker,
}

/// Most spans a new trace's span-id list is sized for ahead (a longer run grows it as usual).
const MAX_RUN_AHEAD: usize = 1024;

/// 1 + the number of spans of trace `id` that `rest` reads before a span of another trace (the
/// host writes a trace's spans of one request together, so this is usually all of them): the
/// size of a new trace's span-id list, which would otherwise grow by doubling (16 slots for 10
/// spans, about 5 bytes per buffered span of the reference load), where the batch does not
/// carry it ([`SpanView::run_len`]). Reads only the records' trace ids
/// ([`BatchReader::trace_ids_ahead`]: a full parse here cost 13% of `ingest`); stops at a
/// record too short to read (the ingest loop reports it) and at [`MAX_RUN_AHEAD`].
fn run_of(id: TraceId, rest: &BatchReader<'_>) -> usize {
    1 + rest
        .trace_ids_ahead()
        .take(MAX_RUN_AHEAD - 1)
        .take_while(|t| *t == id)
        .count()
}

/// Nanoseconds of a duration, saturating (durations are checked to fit at parse time).
fn nanos(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Sampler {
    /// Parses the JSON form of the `processors` section and builds the sampler. The error names
    /// the offending key path.
    pub fn configure(config_json: &str) -> Result<(Sampler, Interest), String> {
        Sampler::from_config(ProcessorsConfig::from_json(config_json)?)
    }

    /// [`Sampler::configure`] for one of `shards` instances of one host: the configuration's
    /// rate budgets are divided among them (see [`crate::shard`]).
    pub fn configure_shard(config_json: &str, shards: u32) -> Result<(Sampler, Interest), String> {
        let mut config = ProcessorsConfig::from_json(config_json)?;
        crate::shard::share_config(&mut config.tail_sampling, shards);
        Sampler::from_config(config)
    }

    /// Builds the sampler from a parsed configuration.
    pub fn from_config(config: ProcessorsConfig) -> Result<(Sampler, Interest), String> {
        config.validate()?;
        let ts = &config.tail_sampling;
        let mut interest = Interest::for_current_policies();
        completeness::add_interest(&mut interest);
        let engine = Engine::build(ts, &mut interest, "processors.tail_sampling")?;
        let sampler = Sampler {
            completeness: Tracker::new(&config.completeness, &interest)?,
            engine,
            traces: HashMap::with_capacity(engine::expected_pending(ts)),
            queue: DueQueue::new(),
            decision_wait: nanos(ts.decision_wait),
            wait_after_root: ts.decision_wait_after_root_received.map(nanos),
            config,
        };
        Ok((sampler, interest))
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProcessorsConfig {
        &self.config
    }

    /// Number of traces waiting for a decision.
    pub fn pending_traces(&self) -> usize {
        self.traces.len()
    }

    /// Records a span-view batch received at `now`, then decides the traces due at `now`
    /// (as [`Sampler::tick`]). A malformed batch is an error; the spans before the malformed
    /// record have been recorded.
    pub fn ingest(&mut self, batch: &[u8], now: u64) -> Result<Vec<u8>, String> {
        let mut reader =
            BatchReader::new(batch).map_err(|e| format!("malformed span batch header: {e}"))?;
        // The service of each resource of the batch, by resource index.
        let mut services: Vec<&str> = Vec::new();
        // The policies' per-batch state, and traces grown past `maximum_trace_size_bytes`.
        let mut scope = self.engine.begin_batch();
        let mut oversized = Vec::new();
        let mut next = 0usize;
        while let Some(record) = reader.next() {
            let i = next;
            next += 1;
            let malformed = |e| format!("malformed span batch at record {i}: {e}");
            match &record {
                Ok(Record::Resource(r)) => {
                    self.engine
                        .observe_resource(&mut scope, r)
                        .map_err(malformed)?;
                    services.push(self.completeness.service(r.attributes.clone()));
                }
                Ok(Record::Span(span)) => {
                    let service = services.get(span.fixed.resource as usize).copied();
                    let service = service.unwrap_or("");
                    self.add_span(span, service, now, &reader, &mut scope, &mut oversized)
                        .map_err(malformed)?;
                }
                Err(e) => return Err(malformed(*e)),
            }
        }
        // Decided after the batch, so the rest of its spans joined the trace (the host holds
        // them and drops them with it).
        let mut out = DecisionWriter::new();
        for id in oversized {
            if let Some(trace) = self.traces.remove(&id) {
                self.decide(id, trace, now, &mut out);
            }
        }
        self.completeness
            .release(&mut self.traces, &mut self.queue, now);
        Ok(self.tick_into(out, now))
    }

    /// Applies the messaging relations of spans that belong to no pending trace here (the WIT
    /// `shard` interface's `links`: other instances' spans linking into this one's traces, late
    /// spans of decided traces): a consumer consumes the messages of its parent and of the
    /// producers it links to. The spans are not buffered. Then decides the traces due at `now`
    /// (a trace held for its consumers may be released).
    pub fn links(&mut self, batch: &[u8], now: u64) -> Result<Vec<u8>, String> {
        let reader =
            BatchReader::new(batch).map_err(|e| format!("malformed span batch header: {e}"))?;
        for (i, record) in reader.enumerate() {
            match record.map_err(|e| format!("malformed span batch at record {i}: {e}"))? {
                Record::Resource(_) => {}
                Record::Span(span) => self.completeness.add_foreign_span(&span, now),
            }
        }
        self.completeness
            .release(&mut self.traces, &mut self.queue, now);
        Ok(self.tick_into(DecisionWriter::new(), now))
    }

    /// Records one span and lets the policies observe it (`scope`: the batch's policy state; a
    /// trace grown past `maximum_trace_size_bytes` is added to `oversized`). One look-up of the
    /// trace serves both. `rest` reads the batch's records after it (a new trace's span-id list
    /// is sized for the run of its spans that follows).
    fn add_span<'a>(
        &mut self,
        span: &SpanView<'a>,
        service: &str,
        now: u64,
        rest: &BatchReader<'_>,
        scope: &mut BatchScope<'a>,
        oversized: &mut Vec<TraceId>,
    ) -> Result<(), LayoutError> {
        let id = span.fixed.trace_id;
        let trace = match self.traces.entry(id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let due = now.saturating_add(self.decision_wait);
                self.queue.push(Lane::Wait, due, id);
                let mut trace = Box::new(PendingTrace::new(now, due));
                // The host counts the run when it writes the batch; reading ahead is for
                // batches it did not count (and runs of 255 spans or more).
                let run = span.run_len().unwrap_or_else(|| run_of(id, rest));
                trace.span_ids.reserve_exact(run);
                v.insert(trace)
            }
        };
        let had_root = trace.has_root();
        trace.add_span(&span.fixed, span.trace_state, now);
        self.completeness.add_span(id, trace, span, service, now);
        if !had_root
            && trace.has_root()
            && let Some(wait) = self.wait_after_root
        {
            let due = now.saturating_add(wait);
            // A trace held for the consumer of a producer keeps waiting for it.
            if due < trace.due && !trace.completeness.is_held() {
                trace.due = due;
                self.queue.push(Lane::AfterRoot, due, id);
            }
        }
        if self.engine.watches_spans() {
            self.engine.observe_span(scope, span, &mut trace.matches)?;
            if self.engine.oversized(trace) {
                oversized.push(id);
            }
        }
        Ok(())
    }

    /// Decides every trace due at `now` (due time <= `now`), earliest first.
    pub fn tick(&mut self, now: u64) -> Vec<u8> {
        self.tick_into(DecisionWriter::new(), now)
    }

    /// [`Sampler::tick`], appending to decisions already in `out`.
    fn tick_into(&mut self, mut out: DecisionWriter, now: u64) -> Vec<u8> {
        while let Some((due, id)) = self.queue.peek()
            && due <= now
        {
            self.queue.pop();
            // A trace with an open producer is held once, for its consumers.
            if let Some(trace) = self.traces.get_mut(&id)
                && trace.due == due
                && let Some(later) = self.completeness.hold(id, trace, due)
            {
                trace.due = later;
                self.queue.push(Lane::Hold, later, id);
                continue;
            }
            self.decide_if_current(due, id, now, &mut out);
        }
        self.finish(out, now, false)
    }

    /// Decides the given traces now, due or not (`trace_ids`: 16 bytes each, concatenated).
    /// Unknown ids are ignored; a list whose length is not a multiple of 16 is an error.
    pub fn decide_now(&mut self, trace_ids: &[u8], now: u64) -> Result<Vec<u8>, String> {
        if !trace_ids.len().is_multiple_of(TRACE_ID_LEN) {
            return Err(format!(
                "trace id list of {} bytes is not a whole number of {TRACE_ID_LEN}-byte ids",
                trace_ids.len()
            ));
        }
        let mut out = DecisionWriter::new();
        let (ids, _) = trace_ids.as_chunks::<TRACE_ID_LEN>();
        for &bytes in ids {
            let id = TraceId(bytes);
            if let Some(trace) = self.traces.remove(&id) {
                self.decide(id, trace, now, &mut out);
            }
        }
        Ok(self.finish(out, now, false))
    }

    /// Decides every pending trace now, earliest due first (shutdown, instance replacement).
    pub fn flush(&mut self, now: u64) -> Vec<u8> {
        let mut out = DecisionWriter::new();
        while let Some((due, id)) = self.queue.pop() {
            self.decide_if_current(due, id, now, &mut out);
        }
        // Every pending trace has a current queue entry; this only guards that invariant.
        let mut rest: Vec<TraceId> = self.traces.keys().copied().collect();
        rest.sort_unstable();
        for id in rest {
            if let Some(trace) = self.traces.remove(&id) {
                self.decide(id, trace, now, &mut out);
            }
        }
        self.finish(out, now, true)
    }

    /// Decides `id` if the queue entry `(due, id)` is current (the trace is pending with that
    /// due time); stale entries are ignored.
    fn decide_if_current(&mut self, due: u64, id: TraceId, now: u64, out: &mut DecisionWriter) {
        if let Entry::Occupied(o) = self.traces.entry(id)
            && o.get().due == due
        {
            let trace = o.remove();
            self.decide(id, trace, now, out);
        }
    }

    fn decide(
        &mut self,
        id: TraceId,
        mut trace: Box<PendingTrace>,
        now: u64,
        out: &mut DecisionWriter,
    ) {
        let report = self.completeness.check(id, &mut trace, now);
        let facts = TraceFacts {
            trace_id: id,
            trace: &trace,
            completeness: report.completeness,
            now,
        };
        let (v, policy) = self.engine.decide(&facts);
        out.push(
            id,
            v.decision,
            report.completeness,
            v.threshold,
            policy,
            report.missing.iter().map(String::as_str),
            &[],
        );
    }

    /// The earliest due time of a pending trace, or 0 when none is pending. Pops stale entries
    /// off the top of the queue on the way.
    fn next_due(&mut self) -> u64 {
        while let Some((due, id)) = self.queue.peek() {
            if self.traces.get(&id).is_some_and(|t| t.due == due) {
                // 0 means "nothing pending" on the wire; a trace due at time 0 reports 1.
                return due.max(1);
            }
            self.queue.pop();
        }
        0
    }

    /// Finishes an answer; `force` sends the completeness metrics whatever their schedule.
    fn finish(&mut self, out: DecisionWriter, now: u64, force: bool) -> Vec<u8> {
        let next_due = self.next_due();
        let traces = &self.traces;
        self.queue.compact(traces.len(), |due, id| {
            traces.get(id).is_some_and(|t| t.due == due)
        });
        self.completeness.finish(out, next_due, now, force)
    }
}

#[cfg(test)]
mod tests;
