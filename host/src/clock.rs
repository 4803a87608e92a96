//! The worker's alarm clock: the worker publishes when it next wants to run (the next due trace,
//! the end of the export linger, a guest re-try), and one tokio task per worker sleeps until
//! then and sends it a tick. Nothing wakes while nothing is due, so an idle sidecar sleeps.
//!
//! The worker has no timer of its own: it blocks on its queue (see `Worker::run`). Ticks come
//! at most once per [`TICK_INTERVAL`], so decisions of traces due close together are made in
//! one guest call, and at most one tick waits in the worker's queue at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::shutdown::Shutdown;
use crate::worker::{TICK_INTERVAL, WorkerMsg, now_unix_nanos};

/// Sleeping with no due time: only a published due time wakes the clock.
const NEVER: u64 = u64::MAX;

/// What the worker and its clock task share.
#[derive(Debug)]
pub struct WakeClock {
    /// When the worker wants a tick (Unix ns), 0 for never.
    due: AtomicU64,
    /// What the clock task sleeps until ([`NEVER`] without a due time).
    until: AtomicU64,
    /// The earliest the next tick may go out (the last tick plus [`TICK_INTERVAL`]).
    floor: AtomicU64,
    /// A tick is in the worker's queue or being handled.
    pending: AtomicBool,
    notify: Notify,
    /// Times the clock task woke up (for tests and the idle-cost check).
    wakes: AtomicU64,
}

impl Default for WakeClock {
    fn default() -> Self {
        WakeClock {
            due: AtomicU64::new(0),
            until: AtomicU64::new(NEVER),
            floor: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            notify: Notify::new(),
            wakes: AtomicU64::new(0),
        }
    }
}

impl WakeClock {
    /// A clock with nothing due.
    pub fn new() -> Self {
        Self::default()
    }

    /// The worker wants a tick at `at` (Unix ns; 0 for none). Wakes the clock task only when
    /// that is earlier than what it sleeps until, so a busy worker publishing after every batch
    /// costs no wake-ups.
    pub fn publish(&self, at: u64) {
        // SeqCst pairs with the clock task's store of `until` and re-read of `due`: either the
        // task sees this due time, or this sees the task's `until` and wakes it.
        self.due.store(at, Ordering::SeqCst);
        if at == 0 {
            return;
        }
        let until = self.until.load(Ordering::SeqCst);
        if at.max(self.floor.load(Ordering::Relaxed)) < until {
            self.notify.notify_one();
        }
    }

    /// The worker took the tick off its queue; the clock may send the next one.
    pub fn ticked(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// Times the clock task woke up so far.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }
}

/// Sends `tx` a [`WorkerMsg::Tick`] whenever the due time `clock` publishes has passed (at most
/// once per [`TICK_INTERVAL`], never while a tick is pending), until `shutdown`. A tick that
/// finds the queue full is skipped: the worker checks the time after every batch anyway.
pub async fn run(
    clock: std::sync::Arc<WakeClock>,
    tx: mpsc::Sender<WorkerMsg>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let tick = u64::try_from(TICK_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
    loop {
        let due = clock.due.load(Ordering::SeqCst);
        let floor = clock.floor.load(Ordering::Relaxed);
        let until = if due == 0 { NEVER } else { due.max(floor) };
        clock.until.store(until, Ordering::SeqCst);
        if clock.due.load(Ordering::SeqCst) != due {
            // The worker published meanwhile and may not have seen `until`: look again.
            continue;
        }
        let sleep = (until != NEVER).then(|| {
            tokio::time::sleep(Duration::from_nanos(until.saturating_sub(now_unix_nanos())))
        });
        tokio::select! {
            _ = &mut stop => return,
            _ = clock.notify.notified() => {}
            _ = async {
                match sleep {
                    Some(s) => s.await,
                    None => std::future::pending().await,
                }
            } => {
                let now = now_unix_nanos();
                let due = clock.due.load(Ordering::SeqCst);
                if due != 0 && now >= due && !clock.pending.load(Ordering::Acquire) {
                    clock.pending.store(true, Ordering::Release);
                    if tx.try_send(WorkerMsg::Tick).is_err() {
                        clock.pending.store(false, Ordering::Release);
                    }
                    clock.floor.store(now.saturating_add(tick), Ordering::Relaxed);
                } else if due != 0 && now >= due {
                    // The last tick is still pending: look again one interval later.
                    clock.floor.store(now.saturating_add(tick), Ordering::Relaxed);
                }
            }
        }
        clock.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn start() -> (
        Arc<WakeClock>,
        mpsc::Receiver<WorkerMsg>,
        crate::shutdown::Trigger,
        tokio::task::JoinHandle<()>,
    ) {
        let clock = Arc::new(WakeClock::new());
        let (tx, rx) = mpsc::channel(16);
        let (trigger, shutdown) = crate::shutdown::pair();
        let task = tokio::spawn(run(Arc::clone(&clock), tx, shutdown));
        (clock, rx, trigger, task)
    }

    async fn next_tick(rx: &mut mpsc::Receiver<WorkerMsg>, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, rx.recv()).await,
            Ok(Some(WorkerMsg::Tick))
        )
    }

    #[tokio::test]
    async fn an_idle_clock_sleeps_until_a_due_time_is_published() {
        let (clock, mut rx, trigger, task) = start();
        // The old clock polled every 10 ms: 30 wake-ups in this time.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(clock.wakes(), 0, "woke with nothing due");
        assert!(rx.try_recv().is_err());

        let due = now_unix_nanos() + 30_000_000;
        clock.publish(due);
        assert!(next_tick(&mut rx, Duration::from_secs(5)).await);
        assert!(now_unix_nanos() >= due, "ticked before the due time");
        // One wake-up for the publication, one for the due time (a slow machine may add one
        // for a timer that fired a little before the wall clock reached the due time).
        assert!(clock.wakes() <= 3, "{} wake-ups", clock.wakes());
        trigger.trigger();
        task.await.expect("clock task");
    }

    #[tokio::test]
    async fn one_tick_is_pending_at_a_time() {
        let (clock, mut rx, trigger, task) = start();
        clock.publish(now_unix_nanos());
        assert!(next_tick(&mut rx, Duration::from_secs(5)).await);
        // Still due, but the worker has not taken the tick: no second one.
        assert!(!next_tick(&mut rx, Duration::from_millis(100)).await);
        clock.ticked();
        clock.publish(now_unix_nanos());
        assert!(next_tick(&mut rx, Duration::from_secs(5)).await);
        clock.ticked();
        clock.publish(0);
        assert!(!next_tick(&mut rx, Duration::from_millis(100)).await);
        trigger.trigger();
        task.await.expect("clock task");
    }

    #[tokio::test]
    async fn an_earlier_due_time_wakes_a_sleeping_clock() {
        let (clock, mut rx, trigger, task) = start();
        clock.publish(now_unix_nanos() + 60_000_000_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.publish(now_unix_nanos() + 20_000_000);
        assert!(
            next_tick(&mut rx, Duration::from_secs(30)).await,
            "slept through the earlier due time"
        );
        trigger.trigger();
        task.await.expect("clock task");
    }
}
