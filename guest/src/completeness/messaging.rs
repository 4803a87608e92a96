//! Asynchronous messaging across traces: which spans produce and consume messages, and the
//! bounded cross-trace index that matches them.
//!
//! A *producer* (kind PRODUCER, or `messaging.operation.type` `create`/`publish`/`send`) is
//! consumed by a *consumer* (kind CONSUMER, or `messaging.operation.type` `receive`/`process`)
//! that is its child or that links to it. A link may come in another trace, in another batch,
//! before or after the producer, and after the producer's trace was decided (a late completion).
//! The index remembers producers (keyed by trace id + span id) and the link targets of consumers
//! that did not match a known producer yet, both bounded (oldest forgotten first), and counts
//! per queue (`messaging.system` + `messaging.destination.name`) the messages produced and
//! consumed and the oldest one not consumed.

use std::collections::VecDeque;

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use tracekeeper_abi::{MetricsWriter, QueueMetrics, SpanId, TraceId};

use super::labels::Interner;

/// OTLP span kind PRODUCER.
pub const KIND_PRODUCER: u8 = 4;
/// OTLP span kind CONSUMER.
pub const KIND_CONSUMER: u8 = 5;
/// OTLP span kind CLIENT.
pub const KIND_CLIENT: u8 = 3;

/// The span attribute naming the messaging operation (OpenTelemetry semantic conventions).
pub const OPERATION_TYPE: &str = "messaging.operation.type";
/// The span attribute naming the messaging system (`rabbitmq`, `kafka`, ...).
pub const SYSTEM: &str = "messaging.system";
/// The span attribute naming the queue, topic or exchange.
pub const DESTINATION: &str = "messaging.destination.name";

/// Most producers (messages) the index remembers; beyond it the oldest are forgotten (a consumer
/// of a forgotten message is no longer matched or counted).
pub const MAX_TRACKED_MESSAGES: usize = 100_000;
/// Most consumer link targets waiting for their producer to arrive; beyond it the oldest are
/// forgotten.
pub const MAX_UNMATCHED_LINKS: usize = 100_000;
/// How long (host time) a message or an unmatched link is remembered at most. Bounds how long a
/// message whose consumer never reaches the guest counts as unconsumed.
pub const MESSAGE_RETENTION_NS: u64 = 3_600 * 1_000_000_000;
/// Most queues counted separately; messages of further queues are counted under
/// [`OVERFLOW_LABEL`](super::labels::OVERFLOW_LABEL) (system and destination names are cut at
/// [`MAX_LABEL_LEN`](super::labels::MAX_LABEL_LEN) bytes).
pub const MAX_QUEUES: usize = 1_000;

/// What a span is to the messaging rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Neither producer nor consumer.
    Other,
    /// Produces a message that some consumer must consume.
    Producer,
    /// Consumes messages: satisfies its parent and the spans it links to.
    Consumer,
}

/// Classifies a span by its kind and `messaging.operation.type`.
///
/// The kind decides when it is PRODUCER or CONSUMER. Otherwise the operation type does:
/// `create` and `publish` produce; `send` produces unless the span is a CLIENT, which in the
/// semantic conventions is the batch send whose messages are its `create` spans (counting it
/// would leave a producer nobody consumes); `receive`, `process` and the older `deliver`
/// consume.
#[inline(always)]
pub fn classify(kind: u8, operation: Option<&str>) -> Role {
    match kind {
        KIND_PRODUCER => return Role::Producer,
        KIND_CONSUMER => return Role::Consumer,
        _ => {}
    }
    match operation {
        Some("create" | "publish") => Role::Producer,
        Some("send") if kind != KIND_CLIENT => Role::Producer,
        Some("receive" | "process" | "deliver") => Role::Consumer,
        _ => Role::Other,
    }
}

/// A span in the index: trace id and span id.
pub type SpanKey = (TraceId, SpanId);

#[derive(Debug, Clone, Copy)]
struct Message {
    queue: usize,
    produced_at: u64,
    consumed: bool,
    /// The producer's trace was decided.
    decided: bool,
}

#[derive(Debug, Default)]
struct Queue {
    system: String,
    destination: String,
    produced: u64,
    consumed: u64,
    consumed_late: u64,
}

/// What [`Index::consume_child`] and [`Index::consume_link`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// The target is a known message, consumed now for the first time; its trace is pending.
    First,
    /// The target is a known message whose trace was already decided: a late completion.
    Late,
    /// The target is a known message that was already consumed (fan-out).
    Again,
    /// The target is not a known message (yet).
    Unknown,
}

/// The cross-trace index of messages and consumer links, and the per-queue counts.
#[derive(Debug)]
pub struct Index {
    messages: HashMap<SpanKey, Message>,
    /// Messages in the order they were produced, for eviction (entries may be stale).
    message_order: VecDeque<(u64, SpanKey)>,
    /// Consumer link targets not matched to a message yet, with the time they were seen.
    unmatched: HashMap<SpanKey, u64>,
    /// Unmatched targets in arrival order, for eviction (entries may be stale).
    unmatched_order: VecDeque<(u64, SpanKey)>,
    queues: Vec<Queue>,
    queue_ids: Interner,
    /// The queue of the last message produced.
    last_queue: usize,
    /// Counts changed since the last metrics section.
    dirty: bool,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            messages: HashMap::new(),
            message_order: VecDeque::new(),
            unmatched: HashMap::new(),
            unmatched_order: VecDeque::new(),
            queues: Vec::new(),
            queue_ids: Interner::new(MAX_QUEUES),
            last_queue: 0,
            dirty: false,
        }
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index::default()
    }

    /// Number of messages remembered.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Number of unmatched link targets remembered.
    pub fn unmatched(&self) -> usize {
        self.unmatched.len()
    }

    /// True when counts changed since the last [`Index::write_metrics`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn queue_id(&mut self, system: &str, destination: &str) -> usize {
        // Messages of one queue tend to come together: try the last one before hashing.
        if let Some(q) = self.queues.get(self.last_queue)
            && q.system == system
            && q.destination == destination
        {
            return self.last_queue;
        }
        let queues = &mut self.queues;
        self.queue_ids
            .id(system, destination, |system, destination| {
                queues.push(Queue {
                    system: system.to_owned(),
                    destination: destination.to_owned(),
                    ..Queue::default()
                });
            })
    }

    /// Records a message produced by span `key` at host time `now`. Returns true when a consumer
    /// link to it was already seen (the message is consumed on arrival). A span seen before is
    /// ignored (returns whether it is consumed).
    pub fn produce(&mut self, key: SpanKey, system: &str, destination: &str, now: u64) -> bool {
        self.expire(now);
        if let Some(m) = self.messages.get(&key) {
            return m.consumed;
        }
        let queue = self.queue_id(system, destination);
        let consumed = self.unmatched.remove(&key).is_some();
        self.messages.insert(
            key,
            Message {
                queue,
                produced_at: now,
                consumed,
                decided: false,
            },
        );
        self.message_order.push_back((now, key));
        let q = &mut self.queues[queue];
        q.produced += 1;
        if consumed {
            q.consumed += 1;
        }
        self.dirty = true;
        self.evict_messages();
        consumed
    }

    /// A consumer in the same trace as `key` whose parent is `key`: consumes the message if `key`
    /// is a known one. Does not remember unknown targets (the producer, if it comes, finds the
    /// consumer through its own trace).
    pub fn consume_child(&mut self, key: SpanKey) -> Consumed {
        self.mark_consumed(key)
    }

    /// A consumer linking to `key` (any trace) seen at `now`: consumes the message, or remembers
    /// the target for a producer that has not arrived yet.
    pub fn consume_link(&mut self, key: SpanKey, now: u64) -> Consumed {
        self.expire(now);
        let found = self.mark_consumed(key);
        if found == Consumed::Unknown && !self.unmatched.contains_key(&key) {
            self.unmatched.insert(key, now);
            self.unmatched_order.push_back((now, key));
            while self.unmatched.len() > MAX_UNMATCHED_LINKS {
                let Some((_, old)) = self.unmatched_order.pop_front() else {
                    break;
                };
                self.unmatched.remove(&old);
            }
        }
        found
    }

    fn mark_consumed(&mut self, key: SpanKey) -> Consumed {
        let Some(m) = self.messages.get_mut(&key) else {
            return Consumed::Unknown;
        };
        if m.consumed {
            return Consumed::Again;
        }
        m.consumed = true;
        let q = &mut self.queues[m.queue];
        q.consumed += 1;
        self.dirty = true;
        if m.decided {
            q.consumed_late += 1;
            self.messages.remove(&key);
            Consumed::Late
        } else {
            Consumed::First
        }
    }

    /// True when the message of span `key` is known and consumed.
    pub fn is_consumed(&self, key: &SpanKey) -> bool {
        self.messages.get(key).is_some_and(|m| m.consumed)
    }

    /// The trace of message `key` was decided: a consumer from now on is a late completion. A
    /// consumed message is forgotten then (nothing can change for it any more; a further consumer
    /// group that links to it is not counted again), which keeps the index to the messages of
    /// pending traces and the unconsumed ones.
    pub fn decided(&mut self, key: &SpanKey) {
        if let Entry::Occupied(mut o) = self.messages.entry(*key) {
            if o.get().consumed {
                o.remove();
            } else {
                o.get_mut().decided = true;
            }
        }
    }

    /// Forgets the oldest messages beyond [`MAX_TRACKED_MESSAGES`].
    fn evict_messages(&mut self) {
        while self.messages.len() > MAX_TRACKED_MESSAGES {
            let Some((at, key)) = self.message_order.pop_front() else {
                break;
            };
            self.forget_message(at, key);
        }
        if self.message_order.len() > self.messages.len().saturating_mul(2) {
            let messages = &self.messages;
            self.message_order
                .retain(|(at, k)| messages.get(k).is_some_and(|m| m.produced_at == *at));
        }
    }

    fn forget_message(&mut self, at: u64, key: SpanKey) {
        if let Entry::Occupied(o) = self.messages.entry(key)
            && o.get().produced_at == at
        {
            let m = o.remove();
            if !m.consumed {
                // The oldest unconsumed message of its queue may have changed.
                self.dirty = true;
            }
        }
    }

    /// Forgets messages and unmatched links older than [`MESSAGE_RETENTION_NS`].
    fn expire(&mut self, now: u64) {
        let horizon = now.saturating_sub(MESSAGE_RETENTION_NS);
        while let Some(&(at, key)) = self.message_order.front()
            && at < horizon
        {
            self.message_order.pop_front();
            self.forget_message(at, key);
        }
        while let Some(&(at, key)) = self.unmatched_order.front()
            && at < horizon
        {
            self.unmatched_order.pop_front();
            if self.unmatched.get(&key) == Some(&at) {
                self.unmatched.remove(&key);
            }
        }
    }

    /// Adds one record per queue (counts since the previous call, oldest unconsumed message) and
    /// resets the deltas.
    pub fn write_metrics(&mut self, now: u64, out: &mut MetricsWriter) {
        self.expire(now);
        // The oldest unconsumed message of each queue: one walk over the messages in production
        // order (at most one section a second, so this is cheaper than keeping them sorted).
        let mut oldest = vec![0u64; self.queues.len()];
        for (at, key) in &self.message_order {
            if let Some(m) = self.messages.get(key)
                && m.produced_at == *at
                && !m.consumed
                && let Some(o) = oldest.get_mut(m.queue)
                && (*o == 0 || *at < *o)
            {
                *o = (*at).max(1);
            }
        }
        for (q, oldest) in self.queues.iter_mut().zip(oldest) {
            out.queue(&QueueMetrics {
                system: &q.system,
                destination: &q.destination,
                produced: q.produced,
                consumed: q.consumed,
                consumed_late: q.consumed_late,
                oldest_unconsumed: oldest,
            });
            q.produced = 0;
            q.consumed = 0;
            q.consumed_late = 0;
        }
        self.dirty = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracekeeper_abi::{DecisionReader, DecisionWriter};

    use super::super::labels::OVERFLOW_LABEL;
    use super::*;

    fn key(t: u8, s: u8) -> SpanKey {
        (TraceId([t; 16]), SpanId([s; 8]))
    }

    fn metrics(index: &mut Index, now: u64) -> Vec<(String, String, u64, u64, u64, u64)> {
        let mut m = MetricsWriter::new();
        index.write_metrics(now, &mut m);
        let buf = DecisionWriter::new().finish_with_metrics(0, &m);
        let view = DecisionReader::new(&buf)
            .unwrap()
            .into_metrics()
            .unwrap()
            .unwrap();
        view.queues()
            .map(|q| {
                (
                    q.system.to_owned(),
                    q.destination.to_owned(),
                    q.produced,
                    q.consumed,
                    q.consumed_late,
                    q.oldest_unconsumed,
                )
            })
            .collect()
    }

    #[test]
    fn roles() {
        assert_eq!(classify(KIND_PRODUCER, None), Role::Producer);
        assert_eq!(classify(KIND_CONSUMER, Some("create")), Role::Consumer);
        assert_eq!(classify(1, Some("publish")), Role::Producer);
        assert_eq!(classify(1, Some("create")), Role::Producer);
        assert_eq!(classify(0, Some("send")), Role::Producer);
        assert_eq!(classify(KIND_CLIENT, Some("send")), Role::Other);
        assert_eq!(classify(KIND_CLIENT, Some("receive")), Role::Consumer);
        assert_eq!(classify(1, Some("process")), Role::Consumer);
        assert_eq!(classify(2, Some("settle")), Role::Other);
        assert_eq!(classify(2, None), Role::Other);
    }

    #[test]
    fn link_before_and_after_the_producer() {
        let mut ix = Index::new();
        // A consumer links to a message that has not arrived yet.
        assert_eq!(ix.consume_link(key(1, 1), 10), Consumed::Unknown);
        assert_eq!(ix.unmatched(), 1);
        assert!(ix.produce(key(1, 1), "rabbitmq", "q", 20));
        assert_eq!(ix.unmatched(), 0);
        // A producer first, then its consumer; then a second consumer group (fan-out).
        assert!(!ix.produce(key(2, 1), "rabbitmq", "q", 30));
        assert!(!ix.is_consumed(&key(2, 1)));
        assert_eq!(ix.consume_link(key(2, 1), 40), Consumed::First);
        assert_eq!(ix.consume_link(key(2, 1), 41), Consumed::Again);
        assert!(ix.is_consumed(&key(2, 1)));
        // A child consumer of an unknown span is not remembered.
        assert_eq!(ix.consume_child(key(3, 3)), Consumed::Unknown);
        assert_eq!(ix.unmatched(), 0);
        assert!(ix.is_dirty());
        assert_eq!(
            metrics(&mut ix, 50),
            [("rabbitmq".into(), "q".into(), 2, 2, 0, 0)]
        );
        assert!(!ix.is_dirty());
        // Deltas reset after each section.
        assert_eq!(
            metrics(&mut ix, 60),
            [("rabbitmq".into(), "q".into(), 0, 0, 0, 0)]
        );
    }

    #[test]
    fn batch_receive_and_late_completion() {
        let mut ix = Index::new();
        for s in 1..=3 {
            ix.produce(key(9, s), "kafka", "orders", 100 + u64::from(s));
        }
        ix.decided(&key(9, 1));
        assert_eq!(
            metrics(&mut ix, 200),
            [("kafka".into(), "orders".into(), 3, 0, 0, 101)]
        );
        // One consumer span linking every message of a batch.
        assert_eq!(ix.consume_link(key(9, 1), 300), Consumed::Late);
        assert_eq!(ix.consume_link(key(9, 2), 300), Consumed::First);
        assert_eq!(
            metrics(&mut ix, 300),
            [("kafka".into(), "orders".into(), 0, 2, 1, 103)]
        );
        assert_eq!(ix.consume_child(key(9, 3)), Consumed::First);
        assert_eq!(
            metrics(&mut ix, 300),
            [("kafka".into(), "orders".into(), 0, 1, 0, 0)]
        );
    }

    #[test]
    fn the_index_is_bounded() {
        let mut ix = Index::new();
        let n = MAX_TRACKED_MESSAGES + 10;
        for i in 0..n {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ix.produce((TraceId(t), SpanId([1; 8])), "s", "d", 1_000 + i as u64);
        }
        assert_eq!(ix.messages(), MAX_TRACKED_MESSAGES);
        // The oldest were forgotten: the oldest unconsumed is the 11th produced.
        let m = metrics(&mut ix, 5_000_000);
        assert_eq!(m[0].2, n as u64);
        assert_eq!(m[0].5, 1_010);
        for i in 0..(MAX_UNMATCHED_LINKS + 5) {
            let mut t = [1u8; 16];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ix.consume_link((TraceId(t), SpanId([2; 8])), 5_000_000);
        }
        assert_eq!(ix.unmatched(), MAX_UNMATCHED_LINKS);
        // Everything older than the retention is forgotten.
        let later = 5_000_000 + MESSAGE_RETENTION_NS + 1;
        let m = metrics(&mut ix, later);
        assert_eq!(m[0].5, 0);
        assert_eq!(ix.messages(), 0);
        assert_eq!(ix.unmatched(), 0);
    }

    #[test]
    fn queues_are_bounded() {
        let mut ix = Index::new();
        for i in 0..(MAX_QUEUES + 3) {
            ix.produce(key(1, 1), "s", &format!("q{i}"), 1);
            ix.messages.clear();
        }
        let m = metrics(&mut ix, 2);
        assert_eq!(m.len(), MAX_QUEUES + 1);
        let overflow = m.iter().find(|q| q.0 == OVERFLOW_LABEL).unwrap();
        assert_eq!(overflow.2, 3);
    }
}
