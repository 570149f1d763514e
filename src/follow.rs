//! Following files that settings are read from (certificates, the ACL file) as they change. A
//! mounted Kubernetes Secret is updated by swapping a symlink, so each file's metadata is read
//! through its path (modification time, size, inode) every few seconds rather than watched; SIGHUP
//! reads them at once, changed or not.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(2);

/// What tells one version of a file from the next.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len(), meta.ino()))
        })
        .collect()
}

/// Rebuilds with `build` whenever one of `files` changes (or SIGHUP comes), and hands the result to
/// `install` on the owner; stops when the owner is gone. A build that fails is logged and the owner
/// keeps what it has; the next change of any file tries again. `what` names the settings in logs.
pub fn follow<O, T, B, I>(
    what: &'static str,
    files: Vec<PathBuf>,
    owner: Weak<O>,
    build: B,
    install: I,
) where
    O: Send + Sync + 'static,
    T: Send + 'static,
    B: Fn() -> Result<T, String> + Send + 'static,
    I: Fn(&O, T) + Send + 'static,
{
    if files.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut seen = stamps(&files);
    runtime.spawn(async move {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let signalled = match &mut hangup {
                Some(hangup) => tokio::select! {
                    _ = hangup.recv() => true,
                    _ = tokio::time::sleep(POLL) => false,
                },
                None => {
                    tokio::time::sleep(POLL).await;
                    false
                }
            };
            if owner.strong_count() == 0 {
                return;
            }
            let now = stamps(&files);
            if now == seen && !signalled {
                continue;
            }
            seen = now;
            match build() {
                Ok(config) => {
                    let Some(owner) = owner.upgrade() else {
                        return;
                    };
                    install(&owner, config);
                    tracing::info!(settings = what, "files read again: in use from now on");
                }
                Err(e) => tracing::error!(settings = what, error = %e,
                    "files read again but cannot be used; the previous settings stay"),
            }
        }
    });
}
