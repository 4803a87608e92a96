//! The tracekeeper benchmark: a synthetic OTLP workload, a load generator, a counting sink, the
//! prost floor, and the runner that measures tracekeeper and Rotel with the same load in one run
//! (DESIGN.md section 9; results and the command in BENCHMARKS.md), the soak, and the idle cost.

pub mod floor;
pub mod idle;
pub mod load;
pub mod procs;
pub mod procstat;
pub mod runner;
pub mod sink;
pub mod soak;
pub mod workload;
