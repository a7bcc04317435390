//! An email allow-list kept in a file (one address per line, `#` comments), reloaded
//! when the file changes, so operators can add people without a restart. A file that
//! becomes unreadable keeps the last good list (and says so in the log).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

pub struct EmailFile {
    path: PathBuf,
    emails: RwLock<Arc<HashSet<String>>>,
    modified: Mutex<Option<SystemTime>>,
}

/// How often the file's modification time is looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

fn read(path: &Path) -> std::io::Result<(HashSet<String>, Option<SystemTime>)> {
    let modified = std::fs::metadata(path)?.modified().ok();
    let text = std::fs::read_to_string(path)?;
    let emails = text
        .lines()
        .map(|line| {
            line.split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|line| !line.is_empty())
        .collect();
    Ok((emails, modified))
}

impl EmailFile {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let (emails, modified) = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            emails: RwLock::new(Arc::new(emails)),
            modified: Mutex::new(modified),
        })
    }

    pub fn current(&self) -> Arc<HashSet<String>> {
        self.emails.read().unwrap().clone()
    }

    /// Reloads when the modification time changed; returns true when it reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == *self.modified.lock().unwrap() {
            return false;
        }
        match read(&self.path) {
            Ok((emails, modified)) => {
                tracing::info!(path = %self.path.display(), entries = emails.len(), "allowed emails reloaded");
                *self.emails.write().unwrap() = Arc::new(emails);
                *self.modified.lock().unwrap() = modified;
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot reload allowed emails; keeping the last list");
                *self.modified.lock().unwrap() = modified;
                false
            }
        }
    }

    /// Checks the file every [`RELOAD_INTERVAL`] for as long as the list is in use.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(file) = weak.upgrade() else { return };
                file.reload_if_changed();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emails.txt");
        std::fs::write(
            &path,
            "# staff\nAlice@Corp.example\n\n bob@corp.example # contractor\n",
        )
        .unwrap();
        let file = EmailFile::load(&path).unwrap();
        let list = file.current();
        assert!(list.contains("alice@corp.example") && list.contains("bob@corp.example"));
        assert_eq!(list.len(), 2);
        assert!(!file.reload_if_changed(), "unchanged file is not re-read");

        std::fs::write(&path, "carol@corp.example\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(file.reload_if_changed());
        assert!(file.current().contains("carol@corp.example"));
        assert!(!file.current().contains("alice@corp.example"));

        std::fs::remove_file(&path).unwrap();
        assert!(!file.reload_if_changed());
        assert!(
            file.current().contains("carol@corp.example"),
            "last good list kept"
        );
    }
}
