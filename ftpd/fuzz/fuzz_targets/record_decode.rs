//! The checksum record decoder: `Record::decode` on arbitrary bytes (a damaged or foreign store
//! entry) returns a record or an error, never panics.
//!
//! Checks, when it decodes: the input was `ENCODED_LEN` bytes; `encode` of the record decodes
//! to the same record and equals the input with the unused bits cleared (flag bits other than
//! `declared` and `open`, the declared CRC when none is declared); what `KEY INFO` shows of it
//! (`updated_rfc3339`) can be formatted.
#![no_main]

use ftpd::records::record::{Record, ENCODED_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::decode(data) else {
        return;
    };
    assert_eq!(data.len(), ENCODED_LEN);
    let encoded = record.encode();
    assert_eq!(
        Record::decode(&encoded),
        Ok(record),
        "encode/decode round trip"
    );

    let mut normal = data.to_vec();
    normal[1] &= 0b11;
    if normal[1] & 1 == 0 {
        normal[3..7].fill(0);
    }
    assert_eq!(
        &encoded[..],
        &normal[..],
        "encode changed a meaningful byte"
    );

    let shown = record.updated_rfc3339();
    assert!(shown.ends_with('Z'), "{shown}");
});
