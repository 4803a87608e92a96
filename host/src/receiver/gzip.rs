//! Bounded gzip decompression of request bodies: a body that would inflate past the limit is
//! refused after at most `limit + 1` bytes of output, so a gzip bomb costs bounded memory.

use std::io::Read;

/// Why a gzip body was refused.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// It inflates to more than the limit (413 / RESOURCE_EXHAUSTED).
    #[error("decompressed body over the limit of {0} bytes")]
    TooLarge(usize),
    /// It is not a valid gzip stream (400).
    #[error("invalid gzip body: {0}")]
    Corrupt(#[from] std::io::Error),
}

/// Inflates `data` (one or more gzip members) into at most `limit` bytes.
pub fn gunzip_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(cap);
    decoder.read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `data` gzipped (the receivers' tests use it too).
    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert!(matches!(
            gunzip_limited(&bomb, 1000),
            Err(GunzipError::TooLarge(1000))
        ));
        assert_eq!(gunzip_limited(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip_limited(b"not gzip", 1000),
            Err(GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn concatenated_members_count_together() {
        let mut two = gzip(&[1u8; 600]);
        two.extend(gzip(&[2u8; 600]));
        assert_eq!(gunzip_limited(&two, 1200).unwrap().len(), 1200);
        assert!(matches!(
            gunzip_limited(&two, 1199),
            Err(GunzipError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_stream_is_corrupt() {
        let z = gzip(b"hello hello hello hello");
        for cut in 1..z.len() - 1 {
            assert!(gunzip_limited(&z[..cut], 1000).is_err(), "cut {cut}");
        }
    }
}
