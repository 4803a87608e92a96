//! The file exporter (`exporters.file`): OTLP JSON, one `ExportTraceServiceRequest` per line,
//! the format of the collector's file exporter (and of `examples/replay` input).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::SendError;

/// Appends to one file, flushed after every request.
#[derive(Debug)]
pub struct FileExporter {
    out: BufWriter<File>,
}

impl FileExporter {
    /// Opens (creates or appends to) the file.
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("exporters.file.path: opening {}", path.display()))?;
        Ok(FileExporter {
            out: BufWriter::new(file),
        })
    }

    /// Writes one line.
    pub fn send(&mut self, body: &Bytes) -> Result<(), SendError> {
        let req = ExportTraceServiceRequest::decode(body.as_ref())
            .map_err(|e| SendError::Permanent(format!("re-reading our own request: {e}")))?;
        serde_json::to_writer(&mut self.out, &req)
            .map_err(|e| SendError::Permanent(format!("encoding JSON: {e}")))?;
        self.out
            .write_all(b"\n")
            .and_then(|()| self.out.flush())
            .map_err(|e| SendError::Retryable(format!("writing: {e}"), None))
    }
}
