//! Helpers shared by the fuzz targets: walking a span-view batch completely, and cutting the
//! process off the network before parsing configurations (which resolve host names).

use tracekeeper_abi::{BatchReader, LayoutError, Record, Value};

/// Walks every record, attribute, nested value, link and event of a span-view batch, as a guest
/// that reads everything would. Returns the number of span records, or the first error.
pub fn walk_batch(buf: &[u8]) -> Result<usize, LayoutError> {
    fn value(v: Value<'_>) -> Result<(), LayoutError> {
        match v {
            Value::Array(mut items) => items.try_for_each(|i| value(i?)),
            Value::KvList(mut entries) => entries.try_for_each(|e| value(e?.1)),
            _ => Ok(()),
        }
    }
    let mut spans = 0;
    for record in BatchReader::new(buf)? {
        match record? {
            Record::Resource(r) => {
                for a in r.attributes {
                    value(a?.1)?;
                }
            }
            Record::Span(s) => {
                spans += 1;
                for a in s.attributes {
                    value(a?.1)?;
                }
                for l in s.links {
                    l?;
                }
                for e in s.events {
                    for a in e?.attributes {
                        value(a?.1)?;
                    }
                }
            }
        }
    }
    Ok(spans)
}

/// Moves this process into a new, empty network namespace, so that the host names a fuzzed
/// configuration names are never looked up over the network (`Config::parse` resolves
/// endpoints): without a network, a lookup fails at once. Exits with a message when the
/// namespace cannot be made (run as root, or under `unshare -rn`).
pub fn isolate_from_network() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: unshare(2) only changes this process's namespaces; it touches no memory.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0
            // SAFETY: as above; a user namespace lets a non-root user make the net namespace.
            || unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
        let isolated = ok || std::env::var_os("TRACEKEEPER_FUZZ_NO_NETWORK").is_some();
        if !isolated {
            eprintln!(
                "config_file: could not enter a network namespace ({}); run as root, under \
                 `unshare -rn`, or set TRACEKEEPER_FUZZ_NO_NETWORK=1 if the machine has no DNS",
                std::io::Error::last_os_error()
            );
            std::process::exit(2);
        }
    });
}
