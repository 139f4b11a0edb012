//! Flags from a JSON or TOML file, reloaded when the file changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::FlagSet;
use super::store::FlagStore;
use crate::error::ConfigError;

/// Why a flag file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid JSON or TOML, or not in the flags format.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A flag in the file is invalid.
    #[error("invalid flag in {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The field and why.
        source: ConfigError,
    },
}

/// The format of a flag file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFormat {
    /// `{"flags": {"name": {...}}}`.
    Json,
    /// `[flags.name]` tables.
    Toml,
}

/// A JSON or TOML file of flags ([`FlagSet`]), applied to a [`FlagStore`] and watched for
/// changes.
///
/// [`watch`](FileSource::watch) spawns a tokio task that reads the file every
/// [`interval`](FileSource::interval) (default 5 s) and applies it when its content has
/// changed (content, not modification time: two writes within the file system's time
/// resolution are both seen). The file's flags are created or replaced; flags it defined
/// before and no longer does are removed; other flags of the store are left alone. An
/// unreadable file, a parse error or an invalid flag changes nothing — the last good
/// flags stay — and is reported as [`Event::FlagSourceFailed`](crate::observe::Event::FlagSourceFailed); a successful reload as
/// [`Event::FlagSourceReloaded`](crate::observe::Event::FlagSourceReloaded). Changes are reported with the file's path as `by`.
///
/// The file is read with blocking `std::fs` calls on the runtime's thread: flag files
/// are small. The task runs until the returned handle is aborted or the runtime stops.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_parapet::flags::{FileSource, FlagStore};
///
/// # async fn run() {
/// let flags = FlagStore::new();
/// let source = FileSource::new("/etc/myapp/flags.toml").interval(Duration::from_secs(2));
/// source.load(&flags).expect("the flags file at startup");
/// let _watcher = source.watch(flags.clone());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    label: String,
    format: FileFormat,
    interval: Duration,
}

impl FileSource {
    /// The file at `path`: TOML when it ends in `.toml`, JSON otherwise.
    pub fn new(path: impl AsRef<Path>) -> FileSource {
        let path = path.as_ref().to_path_buf();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => FileFormat::Toml,
            _ => FileFormat::Json,
        };
        FileSource {
            label: path.display().to_string(),
            path,
            format,
            interval: Duration::from_secs(5),
        }
    }

    /// Read the file as `format`, whatever its extension.
    #[must_use]
    pub fn format(mut self, format: FileFormat) -> Self {
        self.format = format;
        self
    }

    /// How often [`watch`](Self::watch) reads the file (default 5 s; at least 1 ms).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Parse flag-file text.
    pub fn parse(&self, text: &str) -> Result<FlagSet, FlagFileError> {
        let parsed = match self.format {
            FileFormat::Json => serde_json::from_str::<FlagSet>(text).map_err(|e| e.to_string()),
            FileFormat::Toml => toml::from_str::<FlagSet>(text).map_err(|e| e.to_string()),
        };
        let set = parsed.map_err(|message| FlagFileError::Parse {
            path: self.label.clone(),
            message,
        })?;
        for (name, def) in &set.flags {
            def.validate(name)
                .map_err(|source| FlagFileError::Invalid {
                    path: self.label.clone(),
                    source,
                })?;
        }
        Ok(set)
    }

    fn read(&self) -> Result<String, FlagFileError> {
        std::fs::read_to_string(&self.path).map_err(|source| FlagFileError::Read {
            path: self.label.clone(),
            source,
        })
    }

    fn apply(&self, store: &FlagStore, text: &str) -> Result<usize, FlagFileError> {
        let set = self.parse(text)?;
        let n = set.flags.len();
        store
            .by(&self.label)
            .apply_source(&self.label, set.flags)
            .map_err(|source| FlagFileError::Invalid {
                path: self.label.clone(),
                source,
            })?;
        Ok(n)
    }

    fn report(&self, store: &FlagStore, result: &Result<usize, FlagFileError>) {
        store.report_source(&self.label, result.as_ref().map(|n| *n).map_err(|e| e as _));
    }

    /// Read the file once and apply it; returns how many flags it defines. On error the
    /// store is unchanged (and the error is reported to the store's observer too).
    pub fn load(&self, store: &FlagStore) -> Result<usize, FlagFileError> {
        let result = self.read().and_then(|text| self.apply(store, &text));
        self.report(store, &result);
        result
    }

    /// Apply the file now and whenever its content changes, on a tokio task. Needs a
    /// tokio runtime. Runs under paused time too (tests advance it).
    pub fn watch(self, store: FlagStore) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The last content seen (applied or refused): unchanged content is not
            // re-applied, nor re-reported.
            let mut last: Option<Result<String, String>> = None;
            loop {
                ticks.tick().await;
                let read = self.read();
                let seen = match &read {
                    Ok(text) => Ok(text.clone()),
                    Err(e) => Err(e.to_string()),
                };
                if last.as_ref() == Some(&seen) {
                    continue;
                }
                let result = read.and_then(|text| self.apply(&store, &text));
                self.report(&store, &result);
                last = Some(seen);
            }
        })
    }
}
