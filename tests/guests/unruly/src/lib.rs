//! A test guest that misbehaves on command, for the host's sandbox and fault tests.
//!
//! Traces are held `processors.tail_sampling.decision_wait` (`<n>ms` or `<n>s`, default 500ms;
//! the host reads the same key to tell which traces a failed `tick` was about) after their first
//! span and then kept with policy `unruly`. A span's name is a command, acted on when the span is ingested:
//!
//! | name | effect |
//! |---|---|
//! | `trap` | panics (a wasm trap) in `ingest` |
//! | `trap-on-decide` | panics when its trace is decided (in `tick`, `decide-now` or `flush`) |
//! | `loop` | loops forever in `ingest` (the host's deadline must stop it) |
//! | `alloc` | allocates until the memory cap stops it (then aborts: a trap) |
//! | `stack` | recurses until the stack limit stops it |
//! | `err` | `ingest` returns `Err` |
//! | `garbage` | `ingest` returns bytes that are not a decision batch |
//! | `unknown-id` | the answer also decides a trace id that was never sent |
//! | `twice` | when its trace is decided, it is decided twice in the same answer |
//! | `print` | writes one line to stdout and one to stderr |
//! | `flood` | writes 1000 lines to stdout |
//! | `sandbox` | tries to read files, open sockets, resolve a name, read the environment and the arguments; what it got is written on its trace's decision as `unruly.*` attributes |
//!
//! Config (`processors.unruly`): `connect` (an `ip:port` the `sandbox`
//! command tries to connect to); `trap_until_ns` (every `ingest` and `tick` traps while the
//! host's `now` is before it); `print_on_configure` (writes a line during `configure`).
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code)] // the code wit-bindgen generates

use std::cell::RefCell;
use std::collections::HashMap;

use tracekeeper_abi::{
    BatchReader, Completeness, Decision, DecisionWriter, Record, ThresholdOp, TraceId,
};

wit_bindgen::generate!({ world: "sampler-guest", path: "../../../wit" });

use exports::tracekeeper::sampler::sampler::{Guest, Interest};

/// Default hold time of a trace.
const DEFAULT_WAIT_MS: u64 = 500;
/// Lines written by `flood`.
const FLOOD_LINES: usize = 1000;
/// Bytes allocated per step by `alloc`.
const ALLOC_STEP: usize = 1 << 20;

#[derive(Default)]
struct Settings {
    wait_ns: u64,
    connect: Option<String>,
    trap_until_ns: u64,
}

#[derive(Default)]
struct Pending {
    due: u64,
    trap_on_decide: bool,
    twice: bool,
    extra: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    settings: Settings,
    pending: HashMap<TraceId, Pending>,
    /// First-seen order, for deterministic answers.
    order: Vec<TraceId>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn result<T, E: std::fmt::Display>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok:{}", ok(v)),
        Err(e) => format!("err:{e}"),
    }
}

/// Tries every kind of ambient authority; returns what each attempt got.
fn probe_sandbox(connect: Option<&str>) -> Vec<(String, String)> {
    use std::io::Write;
    let mut out = Vec::new();
    let mut put = |k: &str, v: String| out.push((format!("unruly.{k}"), v));
    put(
        "file_read",
        result(std::fs::read("/etc/passwd"), |b| {
            format!("{} bytes", b.len())
        }),
    );
    put(
        "file_create",
        result(std::fs::File::create("unruly-was-here"), |_| {
            "created".into()
        }),
    );
    put(
        "dir_list",
        result(std::fs::read_dir("."), |d| format!("{} entries", d.count())),
    );
    put(
        "cwd",
        result(std::env::current_dir(), |p| p.display().to_string()),
    );
    if let Some(addr) = connect {
        put(
            "tcp_connect",
            result(std::net::TcpStream::connect(addr), |mut s| {
                let _ = s.write_all(b"unruly guest got out\n");
                "connected".into()
            }),
        );
    }
    put(
        "tcp_listen",
        result(std::net::TcpListener::bind("127.0.0.1:0"), |l| {
            format!("{:?}", l.local_addr())
        }),
    );
    put(
        "udp_bind",
        result(std::net::UdpSocket::bind("127.0.0.1:0"), |s| {
            format!("{:?}", s.local_addr())
        }),
    );
    put(
        "dns",
        result(
            std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)),
            |a| format!("{} addresses", a.count()),
        ),
    );
    put("env_count", std::env::vars_os().count().to_string());
    put("env_path", result(std::env::var("PATH"), |v| v));
    put("args_count", std::env::args_os().count().to_string());
    out
}

/// Recurses until the wasm stack limit stops it. No local has its address taken, so the frames
/// live on wasm's own stack (the host's `max_wasm_stack`), not on the shadow stack in linear
/// memory.
#[allow(unconditional_recursion)] // recursing until the stack limit is the point
fn recurse(depth: u64) -> u64 {
    recurse(std::hint::black_box(depth + 1)).wrapping_add(depth)
}

/// Decides the traces `pick` selects (in first-seen order) into a decision batch.
fn decide(state: &mut State, pick: impl Fn(&TraceId, &Pending) -> bool) -> Vec<u8> {
    let mut w = DecisionWriter::new();
    let mut kept = Vec::new();
    for id in std::mem::take(&mut state.order) {
        let Some(p) = state.pending.get(&id) else {
            continue;
        };
        if !pick(&id, p) {
            kept.push(id);
            continue;
        }
        let Some(p) = state.pending.remove(&id) else {
            continue;
        };
        if p.trap_on_decide {
            panic!("unruly guest: trapping on the decision of a trace, as asked");
        }
        let extra: Vec<(&str, &str)> = p
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let copies = if p.twice { 2 } else { 1 };
        for _ in 0..copies {
            w.push(
                id,
                Decision::Sampled,
                Completeness::Complete,
                ThresholdOp::Keep,
                "unruly",
                [],
                &extra,
            );
        }
    }
    state.order = kept;
    let next_due = state.pending.values().map(|p| p.due).min().unwrap_or(0);
    w.finish(next_due)
}

/// `<n>ms` or `<n>s` in milliseconds.
fn parse_ms(s: &str) -> Option<u64> {
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().ok()
    } else {
        s.strip_suffix('s')?.parse::<u64>().ok()?.checked_mul(1000)
    }
}

fn trap_if_told(state: &State, now: u64) {
    if now < state.settings.trap_until_ns {
        panic!(
            "unruly guest: trapping on every call until {}",
            state.settings.trap_until_ns
        );
    }
}

struct Unruly;

impl Guest for Unruly {
    fn configure(config: String) -> Result<Interest, String> {
        let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let c = v.get("unruly").cloned().unwrap_or_default();
        let wait = v
            .get("tail_sampling")
            .and_then(|t| t.get("decision_wait"))
            .and_then(serde_json::Value::as_str);
        let wait_ms = match wait {
            None => DEFAULT_WAIT_MS,
            Some(w) => {
                parse_ms(w).ok_or_else(|| format!("decision_wait {w:?}: use <n>ms or <n>s"))?
            }
        };
        let settings = Settings {
            wait_ns: wait_ms * 1_000_000,
            connect: c
                .get("connect")
                .and_then(|a| a.as_str())
                .map(str::to_string),
            trap_until_ns: c
                .get("trap_until_ns")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        };
        if c.get("print_on_configure")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            println!("unruly guest: configured");
        }
        STATE.with_borrow_mut(|s| s.settings = settings);
        Ok(Interest {
            span_attributes: vec![],
            resource_attributes: vec![],
            all_span_attributes: false,
            all_resource_attributes: false,
            links: false,
            events: false,
        })
    }

    fn ingest(batch: Vec<u8>, now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| {
            trap_if_told(state, now);
            let mut unknown = false;
            for rec in BatchReader::new(&batch).map_err(|e| e.to_string())? {
                let Record::Span(s) = rec.map_err(|e| e.to_string())? else {
                    continue;
                };
                let id = s.fixed.trace_id;
                if !state.pending.contains_key(&id) {
                    state.order.push(id);
                }
                let due = now.saturating_add(state.settings.wait_ns);
                let p = state.pending.entry(id).or_insert_with(|| Pending {
                    due,
                    ..Pending::default()
                });
                match s.name {
                    "trap" => panic!("unruly guest: trapping in ingest, as asked"),
                    "trap-on-decide" => p.trap_on_decide = true,
                    "loop" => loop {
                        std::hint::black_box(&p);
                    },
                    "alloc" => {
                        let mut hoard: Vec<Vec<u8>> = Vec::new();
                        loop {
                            hoard.push(vec![1u8; ALLOC_STEP]);
                            std::hint::black_box(&hoard);
                        }
                    }
                    "stack" => {
                        std::hint::black_box(recurse(0));
                    }
                    "err" => return Err("unruly guest: failing ingest, as asked".into()),
                    "garbage" => return Ok(b"this is not a decision batch".to_vec()),
                    "unknown-id" => unknown = true,
                    "twice" => p.twice = true,
                    "print" => {
                        println!("unruly guest: hello on stdout");
                        eprintln!("unruly guest: hello on stderr");
                    }
                    "flood" => {
                        for i in 0..FLOOD_LINES {
                            println!("unruly guest: flood line {i}");
                        }
                    }
                    "sandbox" => {
                        let connect = state.settings.connect.clone();
                        let probes = probe_sandbox(connect.as_deref());
                        if let Some(p) = state.pending.get_mut(&id) {
                            p.extra = probes;
                        }
                    }
                    _ => {}
                }
            }
            let answer = decide(state, |_, p| p.due <= now);
            if unknown {
                // Re-write the answer with one more decision, for a trace nobody sent.
                let reader =
                    tracekeeper_abi::DecisionReader::new(&answer).map_err(|e| e.to_string())?;
                let next_due = reader.next_due();
                let mut w = DecisionWriter::new();
                for rec in reader {
                    let rec = rec.map_err(|e| e.to_string())?;
                    w.push(
                        rec.trace_id,
                        rec.decision,
                        rec.completeness,
                        rec.threshold,
                        rec.policy,
                        [],
                        &[],
                    );
                }
                w.push(
                    TraceId([0xEE; 16]),
                    Decision::Sampled,
                    Completeness::Complete,
                    ThresholdOp::Keep,
                    "unruly",
                    [],
                    &[],
                );
                return Ok(w.finish(next_due));
            }
            Ok(answer)
        })
    }

    fn tick(now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| {
            trap_if_told(state, now);
            Ok(decide(state, |_, p| p.due <= now))
        })
    }

    fn decide_now(ids: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        let ids: Vec<TraceId> = ids
            .chunks_exact(16)
            .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(TraceId))
            .collect();
        STATE.with_borrow_mut(|state| Ok(decide(state, |id, _| ids.contains(id))))
    }

    fn flush(_now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| Ok(decide(state, |_, _| true)))
    }
}

export!(Unruly);
