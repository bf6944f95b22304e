//! The I/O around the guard: opens the file through the user's `cap_std` root, applies
//! [`guard`](super::guard::guard) to what it finds, and leaves the file ready to write from
//! the start offset under an open record.

use super::direct_io::open_direct;
use super::guard::{self, Disk, Prefix};
use super::UploadError;
use crate::claims::Fence;
use crate::context::Services;
use crate::paths;
use crate::records::recovery;
use crate::records::{FileId, Record};
use cap_std::fs::{Dir, OpenOptions};
use std::io;
use std::sync::Arc;

/// The buffer the prefix CRC is read through.
const CRC_BUF: usize = 1 << 20;

/// Where the file stands when an upload may begin.
pub(super) struct Opened {
    pub file: std::fs::File,
    /// The same file opened for direct I/O, when that is on and possible.
    pub direct: Option<Arc<std::fs::File>>,
    pub prefix_crc: u32,
    pub declared: Option<u32>,
}

/// Opens the file and applies the resume guards; on success the file is `start_pos` bytes
/// long and an open record describes them.
pub(super) fn open_for_upload(
    services: &Services,
    root: &Dir,
    fence: &Fence,
    user: &str,
    path: &str,
    start_pos: u64,
    session_declared: Option<u32>,
) -> Result<Opened, UploadError> {
    let rel = paths::relative(path);
    let mut oo = OpenOptions::new();
    // REST n onto a missing file is refused below; it must not leave an empty file behind.
    oo.read(true).write(true).create(start_pos == 0);
    let existed = root.symlink_metadata(rel).is_ok();
    let file = match root.open_with(rel, &oo) {
        Ok(f) => f.into_std(),
        Err(e) if start_pos > 0 && e.kind() == io::ErrorKind::NotFound => {
            return Err(UploadError::RestBeyondEnd {
                rest: start_pos,
                size: 0,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let mut record = services.store.get(user, path)?;
    if let Some(open) = record.take_if(|r| r.open) {
        // Left open by a writer that died (on another node, or on this one before a
        // restart): bring it in line with the file first. The file is ours now (claimed).
        let store = services.store.as_ref();
        record = Some(recovery::reconcile_file(store, &file, user, path, open, fence.lease())?.0);
    }
    let disk = Disk::of(&file.metadata()?, !existed);
    guard::admit(start_pos, &disk)?;
    let plan = guard::guard(start_pos, &disk, record.as_ref(), session_declared)?;
    let prefix_crc = match plan.prefix {
        Prefix::Known(crc) => crc,
        Prefix::Read { len } => crc_tools::crc_of_file_range(&file, 0..len, &mut vec![0; CRC_BUF])?,
    };
    if plan.cut {
        fence.check()?;
        file.set_len(start_pos)?;
    }
    let direct = services
        .upload
        .direct_io
        .then(|| open_direct(&file))
        .flatten();
    if plan.new_file && services.upload.fsync {
        sync_parent(root, rel)?;
    }
    let id = FileId::of(&file.metadata()?);
    services.store.put_fenced(
        user,
        path,
        &Record::opened(plan.declared, start_pos, prefix_crc).at(id),
        fence.lease(),
    )?;
    Ok(Opened {
        file,
        direct,
        prefix_crc,
        declared: plan.declared,
    })
}

/// Makes a new directory entry durable.
pub fn sync_parent(root: &Dir, rel: &str) -> io::Result<()> {
    let parent = std::path::Path::new(rel)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    // `open_dir` gives an O_PATH handle, which cannot be fsynced; a read-only open can.
    root.open_with(parent, OpenOptions::new().read(true))?
        .sync_all()
}
