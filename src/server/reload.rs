//! When to reload the configuration: on SIGHUP, and when the config file's content changes (a mounted
//! ConfigMap is updated by swapping a symlink, which no inode watch on the file itself would see, so
//! the content is compared every few seconds). An invalid new config is logged and skipped: the running
//! one stays.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::sleep;

use crate::config::{Config, ConfigError};

/// How often the file's content is compared with what was last loaded.
const POLL: Duration = Duration::from_secs(2);

pub(super) struct Reload {
    path: PathBuf,
    /// The content last read, valid or not: the same bad file is reported once, not every poll.
    last: Option<Vec<u8>>,
    hangup: Option<Signal>,
}

impl Reload {
    pub(super) fn new(path: PathBuf) -> Reload {
        let last = std::fs::read(&path).ok();
        // Installing the handler also stops SIGHUP from terminating the process, its default action.
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; the config file is still watched");
                None
            }
        };
        Reload { path, last, hangup }
    }

    /// Waits for SIGHUP or a changed file, and returns the new configuration once one is valid.
    pub(super) async fn next(&mut self) -> Config {
        loop {
            let signalled = match &mut self.hangup {
                Some(hangup) => tokio::select! {
                    _ = hangup.recv() => true,
                    _ = sleep(POLL) => false,
                },
                None => {
                    sleep(POLL).await;
                    false
                }
            };
            let text = match std::fs::read(&self.path) {
                Ok(text) => text,
                Err(e) => {
                    if signalled {
                        tracing::error!(file = %self.path.display(), error = %e, "cannot read the configuration; the running configuration stays");
                    }
                    continue;
                }
            };
            if !signalled && self.last.as_ref() == Some(&text) {
                continue;
            }
            self.last = Some(text.clone());
            let why = if signalled { "SIGHUP" } else { "file changed" };
            match self.parse(&text) {
                Ok(config) => {
                    tracing::info!(file = %self.path.display(), trigger = why, "reloading the configuration");
                    return config;
                }
                Err(e) => tracing::error!(trigger = why, error = %e,
                    "new configuration rejected; the running configuration stays"),
            }
        }
    }

    fn parse(&self, text: &[u8]) -> Result<Config, ConfigError> {
        let text = String::from_utf8_lossy(text);
        Config::from_yaml(&text).map_err(|mut e| {
            e.file = Some(self.path.clone());
            e
        })
    }
}
