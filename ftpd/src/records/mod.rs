//! What the server remembers of each file: the fixed-size [`record::Record`], the durable
//! [`store::RecordStore`] that keeps them, and the [`recovery`] that reconciles records with
//! files after a crash. Every change at the end of an upload, a DELE, a rename or an expiry
//! is also appended to the [`journal`], in the same transaction.

#[cfg(test)]
mod contract;
pub mod expiry;
pub mod journal;
pub mod postgres;
pub mod record;
pub mod recovery;
pub mod store;
pub mod uploads;

pub use postgres::PgStore;
pub use record::{FileId, Record};
pub use store::{Claim, Lease, RecordStore, RedbStore, StoreError};
