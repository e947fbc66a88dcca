//! Typed extraction from the merged configuration tree.
//!
//! A `Table` hands out keys one by one; whatever is left when `finish` is called is a key nobody
//! asked for, and so an unknown key. That is how typos (`pol_interval`) get caught.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};
use url::Url;

use super::ConfigError;
use crate::model::StateUrl;

pub struct Table {
    path: String,
    entries: BTreeMap<String, Value>,
}

fn origin_of(value: &Value) -> String {
    match value.origin() {
        Some(o) => format!(" (from {o})"),
        None => String::new(),
    }
}

impl Table {
    pub fn root(entries: BTreeMap<String, Value>) -> Self {
        Self {
            path: String::new(),
            entries,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn invalid(&self, name: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: self.key(name),
            origin: String::new(),
            reason,
        }
    }

    fn invalid_value(&self, name: &str, value: &Value, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: self.key(name),
            origin: origin_of(value),
            reason,
        }
    }

    /// A sub-table; an absent one is empty so that every key takes its default.
    pub fn table(&mut self, name: &str) -> Result<Table, ConfigError> {
        let path = self.key(name);
        match self.entries.remove(name) {
            None => Ok(Table {
                path,
                entries: BTreeMap::new(),
            }),
            Some(v) => match v.kind {
                ValueKind::Table(t) => Ok(Table {
                    path,
                    entries: t.into_iter().collect(),
                }),
                _ => Err(ConfigError::Invalid {
                    key: path,
                    origin: origin_of(&v),
                    reason: "expected a table (a [section])".into(),
                }),
            },
        }
    }

    /// A whole sub-tree as JSON (a product's declaration, which its own parser checks), with
    /// where it came from.
    pub fn tree(&mut self, name: &str) -> Result<(serde_json::Value, String), ConfigError> {
        let v = self
            .entries
            .remove(name)
            .unwrap_or_else(|| Value::from(config::Map::<String, Value>::new()));
        let origin = origin_of(&v);
        let tree = v
            .try_deserialize::<serde_json::Value>()
            .map_err(|e| ConfigError::Invalid {
                key: self.key(name),
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        Ok((tree, origin))
    }

    /// A scalar as text; numbers and booleans from the environment arrive as strings anyway.
    fn scalar(&mut self, name: &str) -> Result<Option<(String, Value)>, ConfigError> {
        let Some(v) = self.entries.remove(name) else {
            return Ok(None);
        };
        let text = match &v.kind {
            ValueKind::String(s) => s.clone(),
            ValueKind::I64(i) => i.to_string(),
            ValueKind::I128(i) => i.to_string(),
            ValueKind::U64(i) => i.to_string(),
            ValueKind::U128(i) => i.to_string(),
            ValueKind::Float(f) => f.to_string(),
            ValueKind::Boolean(b) => b.to_string(),
            ValueKind::Nil => return Ok(None),
            ValueKind::Table(_) | ValueKind::Array(_) => {
                return Err(self.invalid_value(name, &v, "expected a single value".into()));
            }
        };
        Ok(Some((text, v)))
    }

    pub fn parsed<T>(
        &mut self,
        name: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.scalar(name)? {
            Some((text, v)) => parse(&text).map_err(|reason| self.invalid_value(name, &v, reason)),
            None => Ok(parse(default).expect("built-in default parses")),
        }
    }

    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .scalar(name)?
            .map(|(s, _)| s)
            .filter(|s| !s.trim().is_empty()))
    }

    pub fn string(&mut self, name: &str, default: &str) -> Result<String, ConfigError> {
        self.parsed(name, default, |s| Ok(s.to_string()))
    }

    pub fn url(&mut self, name: &str, default: &str) -> Result<Url, ConfigError> {
        self.parsed(name, default, |s| {
            // The text is not echoed: a URL may carry a password or a signed query.
            let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
            match url.scheme() {
                "http" | "https" => Ok(url),
                other => Err(format!("scheme `{other}` is not http or https")),
            }
        })
    }

    pub fn lake_url(&mut self, name: &str, default: &str) -> Result<Url, ConfigError> {
        self.parsed(name, default, |s| {
            // A bare absolute path is taken for the local directory it names.
            if s.starts_with('/') {
                return Url::from_directory_path(s)
                    .map_err(|_| format!("`{s}` is not a usable directory path"));
            }
            let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
            match url.scheme() {
                "file" | "s3" | "az" | "abfs" | "abfss" | "gs" | "memory" => Ok(url),
                other => Err(format!(
                    "scheme `{other}` is not one of file://, s3://, az://, gs://"
                )),
            }
        })
    }

    /// `state.url`: `sqlite://PATH` (or `sqlite:PATH`), or `postgres://…`/`postgresql://…`.
    pub fn state_url(&mut self, name: &str, default: &str) -> Result<StateUrl, ConfigError> {
        self.parsed(name, default, |s| {
            if let Some(rest) = s
                .strip_prefix("sqlite://")
                .or_else(|| s.strip_prefix("sqlite:"))
            {
                let rest = rest.split('?').next().unwrap_or_default();
                if rest.is_empty() {
                    return Err("the sqlite:// URL has no file path".into());
                }
                return Ok(StateUrl::Sqlite(PathBuf::from(rest)));
            }
            // The text is not echoed: it may carry a password.
            let url =
                Url::parse(s).map_err(|e| format!("not a sqlite:// or postgres:// URL ({e})"))?;
            match url.scheme() {
                "postgres" | "postgresql" if url.host_str().is_some_and(|h| !h.is_empty()) => {
                    Ok(StateUrl::Postgres {
                        url,
                        password_file: None,
                    })
                }
                "postgres" | "postgresql" => Err("the postgres:// URL names no host".into()),
                other => Err(format!(
                    "scheme `{other}` is not sqlite:// (one machine) or postgres:// (replicas)"
                )),
            }
        })
    }

    pub fn duration(&mut self, name: &str, default: &str) -> Result<Duration, ConfigError> {
        self.parsed(name, default, |s| {
            let d = humantime::parse_duration(s.trim())
                .map_err(|e| format!("`{s}` is not a duration such as \"30s\" or \"5m\": {e}"))?;
            if d.is_zero() {
                return Err("must be longer than zero".into());
            }
            Ok(d)
        })
    }

    pub fn integer(
        &mut self,
        name: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        self.parsed(name, &default.to_string(), |s| {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a whole number"))?;
            if n < min || n > max {
                return Err(format!("{n} is outside {min}..={max}"));
            }
            Ok(n)
        })
    }

    pub fn positive(&mut self, name: &str, default: i64) -> Result<i64, ConfigError> {
        self.integer(name, default, 1, 1_000_000)
    }

    pub fn size(&mut self, name: &str, default: &str) -> Result<u64, ConfigError> {
        self.parsed(name, default, parse_size)
    }

    /// A share between 0 and 1: `0.5` or `"50%"`.
    pub fn fraction(&mut self, name: &str, default: &str) -> Result<f64, ConfigError> {
        self.parsed(name, default, parse_fraction)
    }

    pub fn socket_addr(&mut self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        self.parsed(name, default, |s| {
            s.trim()
                .parse()
                .map_err(|_| format!("`{s}` is not an address such as 127.0.0.1:9464"))
        })
    }

    /// A six-field cron expression (seconds first), checked with the scheduler's own parser.
    pub fn cron(&mut self, name: &str, default: &str) -> Result<String, ConfigError> {
        self.parsed(name, default, |s| {
            crate::schedule::parse_cron(s).map(|_| s.trim().to_string())
        })
    }

    /// Fails on the first key nobody asked for.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.entries.into_iter().next() {
            None => Ok(()),
            Some((name, v)) => Err(ConfigError::UnknownKey {
                key: if self.path.is_empty() {
                    name
                } else {
                    format!("{}.{name}", self.path)
                },
                origin: origin_of(&v),
            }),
        }
    }
}

/// `0.5` or `50%`, within 0..=1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(p) => (p.trim(), 100.0),
        None => (t, 1.0),
    };
    let v = num
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a share such as 0.5 or \"50%\""))?
        / scale;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is outside 0..=1 (0% to 100%)"));
    }
    Ok(v)
}

/// `256MiB`, `1.5GB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as \"256MiB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unit `{other}` in `{s}` is not one of B, KB, MB, GB, KiB, MiB, GiB"
            ));
        }
    };
    let bytes = n * mult;
    if bytes < 1.0 {
        return Err("must be at least one byte".into());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::{parse_fraction, parse_size};

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert_eq!(parse_fraction("50%").unwrap(), 0.5);
        assert!(parse_fraction("150%").unwrap_err().contains("outside"));
        assert!(parse_fraction("half").unwrap_err().contains("half"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 268_435_456);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
