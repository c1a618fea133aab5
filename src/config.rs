//! `cardd serve` settings: one list of keys shared by the flags, the
//! `CARDD_<NAME>` environment variables and the TOML file of `--config`.
//!
//! Precedence is flag > environment > file > default. The binary's clap
//! definitions give flags and environment (and the defaults); this module
//! reads the file, merges it under them ([`Settings::merge`]), checks
//! every value once whatever its source ([`Settings::validate`]) and turns
//! the result into the daemon's [`crate::server::Config`].
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits;
use crate::server::{Config, Quotas};

/// Why a configuration file or a setting was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, names an unknown key or holds a value of the
    /// wrong type (toml's message names the key, its line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value of the right type is out of its range.
    #[error("{key} = {value}: {reason} (key `{key}`, flag --{flag}, environment CARDD_{env})")]
    BadValue {
        /// The key (snake_case).
        key: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: &'static str,
        /// The key as a flag.
        flag: String,
        /// The key as an environment variable suffix.
        env: String,
    },
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}`: expected text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// How a brand's snapshots are taken (`snapshot_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotBy {
    /// A second copy of each brand's state follows the committed records
    /// and writes the snapshots: the applier never pauses for one, and the
    /// state takes twice the memory.
    Copy,
    /// The applier forks at each snapshot and the child writes it: one
    /// copy of the state, and a pause of the fork (~20 ms at a million
    /// cards) per snapshot. The default: under load the copy's p99 was no
    /// better (docs/benchmarks.md), and it doubles the memory.
    #[default]
    Fork,
}

impl std::str::FromStr for SnapshotBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(SnapshotBy::Copy),
            "fork" => Ok(SnapshotBy::Fork),
            other => Err(format!("`{other}`: expected copy or fork")),
        }
    }
}

impl std::fmt::Display for SnapshotBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotBy::Copy => "copy",
            SnapshotBy::Fork => "fork",
        })
    }
}

/// Defines [`Settings`] and [`FileSettings`] from one list, so that a key
/// cannot exist in one and not the other.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty, )*) => {
        /// Every `cardd serve` setting, after the merge of its sources.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        /// What a `--config` file may set: every key optional, unknown keys
        /// refused.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileSettings {
            $( $(#[doc = $doc])* #[serde(default)] pub $name: Option<$ty>, )*
        }

        impl Settings {
            /// Every key name, in the order the effective settings print.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name),)*];

            /// `given` (flags and environment, over the defaults) merged
            /// with `file`: a key set by flag or environment (`explicit`)
            /// keeps that value, else the file's, else the default.
            pub fn merge(given: Settings, file: FileSettings, explicit: impl Fn(&str) -> bool) -> Settings {
                Settings {
                    $( $name: match file.$name {
                        Some(v) if !explicit(stringify!($name)) => v,
                        _ => given.$name,
                    }, )*
                }
            }

            /// The settings as TOML (a file `--config` accepts); a key with
            /// no value is shown commented out.
            pub fn to_toml(&self) -> String {
                let mut out = String::new();
                $( out.push_str(&toml_line(stringify!($name), &self.$name)); )*
                out
            }
        }
    };
}

settings! {
    /// The data directory (created on first start).
    data: PathBuf,
    /// Where terminals connect.
    listen: SocketAddr,
    /// The HTTP listener (metrics, health); off unless set.
    http_listen: Option<SocketAddr>,
    /// Provision the demo brand into an empty ledger.
    demo: bool,
    /// Largest frame accepted, in bytes.
    max_frame_bytes: usize,
    /// Sign-on failures per address per minute (0 = unlimited).
    sign_on_failures_per_minute: u32,
    /// Unknown-card answers per terminal and address per minute (0 = unlimited).
    card_misses_per_minute: u32,
    /// TLS certificate chain (PEM), with `tls_key`.
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with `tls_cert`.
    tls_key: Option<PathBuf>,
    /// Records between two snapshots of a brand.
    snapshot_every: u64,
    /// `fork` (the default: the applier pauses for a fork) or `copy` (a
    /// second copy of the state writes snapshots; no pause, twice the
    /// memory).
    snapshot_by: SnapshotBy,
    /// Signed-on sessions of one terminal key.
    connections_per_terminal: usize,
    /// Signed-on sessions of one owner key.
    connections_per_owner: usize,
    /// Signed-on terminal sessions of one brand.
    connections_per_brand: usize,
    /// Slots only owner keys may use.
    owner_reserved_connections: usize,
    /// Audit streams of one key.
    audit_streams_per_key: usize,
    /// Audit streams of one brand.
    audit_streams_per_brand: usize,
    /// Audit streams of the whole daemon.
    audit_streams: usize,
    /// Seconds an audit stream may wait for its reader.
    audit_stall_secs: u64,
    /// Seconds a peer may take to accept a write before its connection is
    /// closed.
    write_timeout_secs: u64,
    /// MiB per second all audit streams together may send.
    audit_mib_per_sec: u32,
    /// KiB after which a brand's log segment is sealed.
    log_segment_kib: u64,
    /// `text` or `json`.
    log_format: LogFormat,
    /// NATS servers (comma-separated `nats://HOST:PORT`) holding every
    /// brand's replicated log; off (single node) unless set.
    replicate: Option<String>,
    /// Follow the replicated log as a standby instead of serving tills
    /// (with `replicate`).
    standby: bool,
}

/// One `key = value` line (a `#` line for an unset optional key).
fn toml_line<T: Serialize>(key: &str, value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(v) => format!("{key} = {v}\n"),
        // None does not serialise: the key is unset.
        Err(_) => format!("# {key} = (not set)\n"),
    }
}

/// Reads a `--config` file: TOML, known keys only, values of the right type.
pub fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// A value out of its range, with the names it goes by.
fn bad(key: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
    ConfigError::BadValue {
        key,
        value: value.to_string(),
        reason,
        flag: key.replace('_', "-"),
        env: key.to_uppercase(),
    }
}

/// `value` must lie in `range`.
fn in_range<T: PartialOrd + ToString>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(bad(key, value, reason))
    }
}

impl Settings {
    /// Checks every value's range and the pairs that go together, naming
    /// the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let frame = limits::MIN_FRAME_BYTES..=limits::MAX_FRAME_BYTES_CEILING;
        in_range(
            "max_frame_bytes",
            self.max_frame_bytes,
            frame,
            "must be 1024..=262144",
        )?;
        in_range(
            "snapshot_every",
            self.snapshot_every,
            1..=u64::MAX,
            "must be at least 1",
        )?;
        let at_least_one = [
            ("connections_per_terminal", self.connections_per_terminal),
            ("connections_per_owner", self.connections_per_owner),
            ("connections_per_brand", self.connections_per_brand),
            ("audit_streams_per_key", self.audit_streams_per_key),
            ("audit_streams_per_brand", self.audit_streams_per_brand),
        ];
        for (key, v) in at_least_one {
            in_range(key, v, 1..=usize::MAX, "must be at least 1")?;
        }
        let reserved = self.owner_reserved_connections;
        in_range(
            "owner_reserved_connections",
            reserved,
            1..=4_999,
            "must be 1..=4999",
        )?;
        in_range(
            "audit_streams",
            self.audit_streams,
            1..=999,
            "must be 1..=999",
        )?;
        in_range(
            "audit_stall_secs",
            self.audit_stall_secs,
            1..=u64::MAX,
            "must be at least 1",
        )?;
        in_range(
            "write_timeout_secs",
            self.write_timeout_secs,
            1..=3_600,
            "must be 1..=3600",
        )?;
        in_range(
            "audit_mib_per_sec",
            self.audit_mib_per_sec,
            1..=100_000,
            "must be 1..=100000",
        )?;
        in_range(
            "log_segment_kib",
            self.log_segment_kib,
            64..=1024 * 1024,
            "must be 64..=1048576",
        )?;
        if self.standby && self.replicate.is_none() {
            return Err(bad("replicate", "(not set)", "standby needs replicate"));
        }
        if let Some(urls) = &self.replicate {
            let ok = urls
                .split(',')
                .all(|u| u.trim().starts_with("nats://") && u.trim().len() > "nats://".len());
            if !ok {
                return Err(bad(
                    "replicate",
                    urls,
                    "must be nats://HOST:PORT[,nats://HOST:PORT…]",
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(bad("tls_key", "(not set)", "tls_cert needs tls_key")),
            (None, Some(_)) => Err(bad("tls_cert", "(not set)", "tls_key needs tls_cert")),
            _ => Ok(()),
        }
    }

    /// The daemon's configuration.
    pub fn server_config(&self) -> Config {
        let reserved = self.owner_reserved_connections;
        Config {
            data_dir: self.data.clone(),
            listen: self.listen,
            http_listen: self.http_listen,
            max_frame_bytes: self.max_frame_bytes,
            demo: self.demo,
            sign_on_failures_per_minute: self.sign_on_failures_per_minute,
            card_misses_per_minute: self.card_misses_per_minute,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            snapshot_every: self.snapshot_every,
            snapshot_by: self.snapshot_by,
            quotas: Quotas {
                connections_per_terminal: self.connections_per_terminal,
                connections_per_owner: self.connections_per_owner,
                connections_per_brand: self.connections_per_brand,
                sessions: Quotas::sessions_beside(reserved),
                owner_reserved: reserved,
                audit_streams_per_key: self.audit_streams_per_key,
                audit_streams_per_brand: self.audit_streams_per_brand,
                audit_streams: self.audit_streams,
                audit_mib_per_sec: self.audit_mib_per_sec,
            },
            audit_stall_secs: self.audit_stall_secs,
            write_timeout_secs: self.write_timeout_secs,
            log_segment_kib: self.log_segment_kib,
            replicate: self.replicate.clone(),
            standby: self.standby,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        let c = Config::default();
        Settings {
            data: c.data_dir,
            listen: c.listen,
            http_listen: None,
            demo: false,
            max_frame_bytes: c.max_frame_bytes,
            sign_on_failures_per_minute: c.sign_on_failures_per_minute,
            card_misses_per_minute: c.card_misses_per_minute,
            tls_cert: None,
            tls_key: None,
            snapshot_every: c.snapshot_every,
            snapshot_by: c.snapshot_by,
            connections_per_terminal: c.quotas.connections_per_terminal,
            connections_per_owner: c.quotas.connections_per_owner,
            connections_per_brand: c.quotas.connections_per_brand,
            owner_reserved_connections: c.quotas.owner_reserved,
            audit_streams_per_key: c.quotas.audit_streams_per_key,
            audit_streams_per_brand: c.quotas.audit_streams_per_brand,
            audit_streams: c.quotas.audit_streams,
            audit_stall_secs: c.audit_stall_secs,
            write_timeout_secs: c.write_timeout_secs,
            audit_mib_per_sec: c.quotas.audit_mib_per_sec,
            log_segment_kib: c.log_segment_kib,
            log_format: LogFormat::Text,
            replicate: None,
            standby: false,
        }
    }

    #[test]
    fn the_file_fills_in_only_what_flags_and_environment_left_to_the_default() {
        let file: FileSettings =
            toml::from_str("snapshot_every = 7\nlisten = \"127.0.0.1:9\"\nlog_format = \"json\"")
                .unwrap();
        let mut given = defaults();
        given.listen = "127.0.0.1:8".parse().unwrap();
        let merged = Settings::merge(given, file, |key| key == "listen");
        assert_eq!(merged.snapshot_every, 7);
        assert_eq!(merged.listen, "127.0.0.1:8".parse().unwrap());
        assert_eq!(merged.log_format, LogFormat::Json);
        assert_eq!(merged.data, PathBuf::from("cardd-data"));
    }

    #[test]
    fn the_defaults_are_valid_and_round_trip_through_toml() {
        let d = defaults();
        d.validate().unwrap();
        assert_eq!(d.server_config().quotas, Quotas::default());
        let file: FileSettings = toml::from_str(&d.to_toml()).unwrap();
        assert_eq!(Settings::merge(defaults(), file, |_| false), d);
        assert_eq!(Settings::KEYS.len(), d.to_toml().lines().count());
    }

    #[test]
    fn a_bad_value_names_its_key_flag_and_variable() {
        let mut s = defaults();
        s.audit_streams = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("audit_streams = 0"), "{e}");
        assert!(
            e.contains("--audit-streams") && e.contains("CARDD_AUDIT_STREAMS"),
            "{e}"
        );
        let mut s = defaults();
        s.tls_cert = Some("c.pem".into());
        assert!(s.validate().unwrap_err().to_string().contains("tls_key"));
        let mut s = defaults();
        s.standby = true;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("standby needs replicate"));
        s.replicate = Some("nats://127.0.0.1:4222,127.0.0.1:4223".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("--replicate") && e.contains("nats://HOST:PORT"),
            "{e}"
        );
        s.replicate = Some("nats://127.0.0.1:4222, nats://127.0.0.1:4223".into());
        s.validate().unwrap();
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = toml::from_str::<FileSettings>("listen_addr = \"x\"").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }
}
