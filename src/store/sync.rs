//! Syncing a file by path (`fdatasync`), with the file kept open between syncs: what the
//! writer's VFS, the checkpointer and the start (a WAL left by a previous process) share.

/// `fdatasync`s the file at `path`, opening it on first use.
pub(super) fn sync_file(
    file: &mut Option<std::fs::File>,
    path: &std::path::Path,
) -> std::io::Result<()> {
    let file = match file {
        Some(file) => file,
        None => file.insert(std::fs::File::open(path)?),
    };
    file.sync_data()
}
