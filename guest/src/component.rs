//! The `sharded-sampler-guest` component: the WIT `sampler` and `shard` interfaces, each call
//! delegated to one [`Sampler`] held for the life of the instance (wasm instances are
//! single-threaded).

use std::cell::{Cell, RefCell};

use crate::{Interest, Sampler};

wit_bindgen::generate!({
    world: "sharded-sampler-guest",
    path: "../wit",
});

use exports::tracekeeper::sampler::sampler as wit;
use exports::tracekeeper::sampler::shard as wit_shard;

/// The message of every call made before a successful `configure`.
const NOT_CONFIGURED: &str = "not configured";

thread_local! {
    static SAMPLER: RefCell<Option<Sampler>> = const { RefCell::new(None) };
    /// Instances of the host (`set-shard`), 1 unless told otherwise.
    static SHARDS: Cell<u32> = const { Cell::new(1) };
}

/// Runs `f` on the configured sampler.
fn with_sampler(
    f: impl FnOnce(&mut Sampler) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    SAMPLER.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| "sampler called re-entrantly".to_owned())?;
        match slot.as_mut() {
            Some(sampler) => f(sampler),
            None => Err(NOT_CONFIGURED.to_owned()),
        }
    })
}

impl From<Interest> for wit::Interest {
    fn from(i: Interest) -> Self {
        wit::Interest {
            span_attributes: i.span_attributes,
            resource_attributes: i.resource_attributes,
            all_span_attributes: i.all_span_attributes,
            all_resource_attributes: i.all_resource_attributes,
            links: i.links,
            events: i.events,
        }
    }
}

struct Component;

impl wit::Guest for Component {
    /// Configures the instance once; a second call is refused (pending traces would be lost
    /// silently), so a new configuration takes a new instance.
    fn configure(config: String) -> Result<wit::Interest, String> {
        SAMPLER.with(|cell| {
            let mut slot = cell
                .try_borrow_mut()
                .map_err(|_| "sampler called re-entrantly".to_owned())?;
            if slot.is_some() {
                return Err(
                    "already configured; a new configuration needs a new instance".to_owned(),
                );
            }
            let (sampler, interest) = Sampler::configure_shard(&config, SHARDS.with(Cell::get))?;
            *slot = Some(sampler);
            Ok(interest.into())
        })
    }

    fn ingest(batch: Vec<u8>, now: u64) -> Result<Vec<u8>, String> {
        with_sampler(|s| s.ingest(&batch, now))
    }

    fn tick(now: u64) -> Result<Vec<u8>, String> {
        with_sampler(|s| Ok(s.tick(now)))
    }

    fn decide_now(trace_ids: Vec<u8>, now: u64) -> Result<Vec<u8>, String> {
        with_sampler(|s| s.decide_now(&trace_ids, now))
    }

    fn flush(now: u64) -> Result<Vec<u8>, String> {
        with_sampler(|s| Ok(s.flush(now)))
    }
}

impl wit_shard::Guest for Component {
    /// Remembered for `configure`, which divides the configuration's rates by `count`.
    fn set_shard(_index: u32, count: u32) {
        SHARDS.with(|c| c.set(count.max(1)));
    }

    fn links(batch: Vec<u8>, now: u64) -> Result<Vec<u8>, String> {
        with_sampler(|s| s.links(&batch, now))
    }
}

export!(Component);
