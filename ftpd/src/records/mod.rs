//! What the server remembers of each file: the fixed-size [`record::Record`], the durable
//! [`store::RecordStore`] that keeps them, and the [`recovery`] that reconciles records with
//! files after a crash.

pub mod record;
pub mod recovery;
pub mod store;

pub use record::{FileId, Record};
pub use store::{RecordStore, RedbStore, StoreError};
