//! Streaming CRC-32/ISO-HDLC (the zlib / Ethernet CRC) on top of `crc32fast`.

/// CRC of a whole buffer in one call.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC of the concatenation `A ++ B`, given `crc(A)`, `crc(B)` and `len(B)`.
///
/// This is how the server extends a stored prefix's CRC by newly received bytes without
/// reading the prefix again.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let mut a = crc32fast::Hasher::new_with_initial(crc_a);
    a.combine(&crc32fast::Hasher::new_with_initial_len(crc_b, len_b));
    a.finalize()
}

/// A running CRC-32 that also counts the bytes it has seen.
///
/// It can be resumed from a known `(crc, len)` pair, so an upload that continues a partial file
/// keeps one running value for the whole file.
#[derive(Clone, Debug, Default)]
pub struct Crc32 {
    inner: crc32fast::Hasher,
}

impl Crc32 {
    /// A CRC over zero bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues from the CRC `crc` of a prefix of `len` bytes.
    pub fn resume(crc: u32, len: u64) -> Self {
        Crc32 {
            inner: crc32fast::Hasher::new_with_initial_len(crc, len),
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// The CRC of everything fed so far (the value stays usable).
    pub fn value(&self) -> u32 {
        self.inner.clone().finalize()
    }

    /// How many bytes the CRC covers, including a resumed prefix.
    pub fn len(&self) -> u64 {
        self.inner.total_len()
    }

    /// True when the CRC covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_matches_the_spec() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: [u8; 1000] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let mut c = Crc32::new();
        for chunk in data.chunks(37) {
            c.update(chunk);
        }
        assert_eq!(c.value(), crc32(&data));
        assert_eq!(c.len(), 1000);
    }

    #[test]
    fn combine_and_resume_agree_with_whole() {
        let data: [u8; 777] = core::array::from_fn(|i| (i * 13 + 1) as u8);
        for split in [0, 1, 100, 776, 777] {
            let (a, b) = data.split_at(split);
            let whole = crc32(&data);
            assert_eq!(combine(crc32(a), crc32(b), b.len() as u64), whole);
            let mut r = Crc32::resume(crc32(a), a.len() as u64);
            r.update(b);
            assert_eq!(r.value(), whole);
            assert_eq!(r.len(), 777);
        }
    }
}
