//! Completeness counts per root span type (root service + root span name): traces decided
//! complete and incomplete since the last metrics section, and over a sliding window of host
//! time (`processors.completeness.window`) for the completeness ratio.

use tracekeeper_abi::{MetricsWriter, RootMetrics};

use super::labels::Interner;

/// Buckets of a sliding window: the window moves in steps of `window / WINDOW_BUCKETS`.
pub const WINDOW_BUCKETS: usize = 30;
/// Most root types counted separately; traces of further root types are counted under
/// `_overflow` (service and name cut at 256 bytes, see [`super::labels`]).
pub const MAX_ROOT_TYPES: usize = 1_000;

/// Counts of one bucket: (complete, incomplete).
type Counts = (u64, u64);

/// A sliding window of (complete, incomplete) counts in [`WINDOW_BUCKETS`] buckets.
#[derive(Debug, Clone)]
struct Window {
    buckets: [Counts; WINDOW_BUCKETS],
    /// Index (in bucket widths since time 0) of the newest bucket.
    newest: u64,
}

impl Window {
    fn new() -> Self {
        Window {
            buckets: [(0, 0); WINDOW_BUCKETS],
            newest: 0,
        }
    }

    /// Moves the window so that bucket `step` is the newest, clearing the buckets that left it.
    /// A clock that went back leaves the window where it is.
    fn advance(&mut self, step: u64) {
        if step <= self.newest {
            return;
        }
        let gone = step - self.newest;
        if gone >= WINDOW_BUCKETS as u64 {
            self.buckets = [(0, 0); WINDOW_BUCKETS];
        } else {
            for s in self.newest + 1..=step {
                self.buckets[(s % WINDOW_BUCKETS as u64) as usize] = (0, 0);
            }
        }
        self.newest = step;
    }

    fn add(&mut self, step: u64, complete: bool) {
        self.advance(step);
        let b = &mut self.buckets[(self.newest % WINDOW_BUCKETS as u64) as usize];
        if complete {
            b.0 += 1;
        } else {
            b.1 += 1;
        }
    }

    fn sum(&mut self, step: u64) -> Counts {
        self.advance(step);
        self.buckets
            .iter()
            .fold((0, 0), |(c, i), b| (c + b.0, i + b.1))
    }
}

#[derive(Debug, Clone)]
struct RootType {
    service: String,
    name: String,
    /// Since the last metrics section.
    delta: Counts,
    window: Window,
}

/// Per-root-type completeness counts.
#[derive(Debug)]
pub struct RootCounts {
    bucket_ns: u64,
    types: Vec<RootType>,
    ids: Interner,
    dirty: bool,
}

impl RootCounts {
    /// Counts over a sliding window of `window_ns` nanoseconds (at least one per bucket).
    pub fn new(window_ns: u64) -> Self {
        RootCounts {
            bucket_ns: (window_ns / WINDOW_BUCKETS as u64).max(1),
            types: Vec::new(),
            ids: Interner::new(MAX_ROOT_TYPES),
            dirty: false,
        }
    }

    /// True when a trace was counted since the last [`RootCounts::write_metrics`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The id of root type (`service`, `name`), for [`RootCounts::record`].
    pub fn id(&mut self, service: &str, name: &str) -> usize {
        let types = &mut self.types;
        self.ids.id(service, name, |service, name| {
            types.push(RootType {
                service: service.to_owned(),
                name: name.to_owned(),
                delta: (0, 0),
                window: Window::new(),
            });
        })
    }

    /// Counts one trace of root type `id` decided at host time `now`.
    pub fn record(&mut self, id: usize, complete: bool, now: u64) {
        let Some(t) = self.types.get_mut(id) else {
            return;
        };
        let step = now / self.bucket_ns;
        if complete {
            t.delta.0 += 1;
        } else {
            t.delta.1 += 1;
        }
        t.window.add(step, complete);
        self.dirty = true;
    }

    /// Adds one record per root type (deltas since the previous call, window counts at `now`)
    /// and resets the deltas.
    pub fn write_metrics(&mut self, now: u64, out: &mut MetricsWriter) {
        let step = now / self.bucket_ns;
        for t in &mut self.types {
            let (window_complete, window_incomplete) = t.window.sum(step);
            out.root(&RootMetrics {
                service: &t.service,
                name: &t.name,
                complete: t.delta.0,
                incomplete: t.delta.1,
                window_complete,
                window_incomplete,
            });
            t.delta = (0, 0);
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

    const SEC: u64 = 1_000_000_000;

    impl RootCounts {
        fn record_pair(&mut self, service: &str, name: &str, complete: bool, now: u64) {
            let id = self.id(service, name);
            self.record(id, complete, now);
        }
    }

    fn read(c: &mut RootCounts, now: u64) -> Vec<(String, String, u64, u64, u64, u64)> {
        let mut m = MetricsWriter::new();
        c.write_metrics(now, &mut m);
        let buf = DecisionWriter::new().finish_with_metrics(0, &m);
        let view = DecisionReader::new(&buf)
            .unwrap()
            .into_metrics()
            .unwrap()
            .unwrap();
        view.roots()
            .map(|r| {
                (
                    r.service.to_owned(),
                    r.name.to_owned(),
                    r.complete,
                    r.incomplete,
                    r.window_complete,
                    r.window_incomplete,
                )
            })
            .collect()
    }

    #[test]
    fn deltas_and_a_sliding_window() {
        // 300 s window: 10 s buckets.
        let mut c = RootCounts::new(300 * SEC);
        let t0 = 1_700_000_000 * SEC;
        for i in 0..19 {
            c.record_pair("checkout", "POST /checkout", true, t0 + i * SEC);
        }
        c.record_pair("checkout", "POST /checkout", false, t0 + 20 * SEC);
        c.record_pair("", "", false, t0 + 20 * SEC);
        assert!(c.is_dirty());
        let r = read(&mut c, t0 + 21 * SEC);
        assert_eq!(
            r,
            [
                ("checkout".into(), "POST /checkout".into(), 19, 1, 19, 1),
                (String::new(), String::new(), 0, 1, 0, 1)
            ]
        );
        assert!(!c.is_dirty());
        // 4 minutes later the window still holds them; deltas are reset.
        let r = read(&mut c, t0 + 260 * SEC);
        assert_eq!(
            r[0],
            ("checkout".into(), "POST /checkout".into(), 0, 0, 19, 1)
        );
        // Past the window (and its last bucket), the first traces have left it.
        let r = read(&mut c, t0 + 315 * SEC);
        assert_eq!(r[0].4 + r[0].5, 1, "{r:?}");
        let r = read(&mut c, t0 + 10_000 * SEC);
        assert_eq!(r[0].4 + r[0].5, 0);
        // A clock that goes back counts into the newest bucket.
        c.record_pair("checkout", "POST /checkout", true, t0);
        assert_eq!(read(&mut c, t0 + 10_000 * SEC)[0].4, 1);
    }

    #[test]
    fn root_types_are_bounded() {
        let mut c = RootCounts::new(300 * SEC);
        for i in 0..(MAX_ROOT_TYPES + 5) {
            c.record_pair("svc", &format!("GET /users/{i}"), true, SEC);
        }
        let r = read(&mut c, SEC);
        assert_eq!(r.len(), MAX_ROOT_TYPES + 1);
        let overflow = r.iter().find(|t| t.1 == OVERFLOW_LABEL).unwrap();
        assert_eq!(overflow.2, 5);
    }
}
