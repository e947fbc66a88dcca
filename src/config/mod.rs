//! Configuration: layered TOML files, then `DPSS_SYNC__SECTION__KEY` environment variables.
//!
//! The `config` crate merges the sources; this module then walks the merged tree itself instead
//! of handing it to serde, so that every problem (an unknown key, a missing one, a bad value) is
//! reported with the full dotted key and, where known, the file or variable it came from.
//! Operators fix configs from that message alone; "invalid type" without a key is useless at 3am.

mod fields;
mod secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fields::Table;
pub use secret::{Secret, SecretFileError, SecretSource};
use url::Url;

use crate::model::StateUrl;
pub use crate::model::TableFormat;
use crate::product::{Catalog, Product};

/// The defaults a `demo` run uses: the embedded simulator, a lake and a state under `./`.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Source(String),
    #[error("unknown configuration key `{key}`{origin}")]
    UnknownKey { key: String, origin: String },
    #[error("missing required key `{key}`: {hint}")]
    Missing { key: String, hint: String },
    #[error("bad value for `{key}`{origin}: {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
}

/// Where a configuration comes from: files in order, then the process environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    pub inline: Vec<String>,
    pub env: bool,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub lake: LakeSettings,
    pub state: StateSettings,
    /// `work.dir`: downloads, scratch copies and spills; `downloads/` beside the state unless set.
    pub work_dir: Option<PathBuf>,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub decode: DecodeLimits,
    pub products: BTreeMap<Product, ProductSettings>,
    /// Every product this configuration knows: the built-ins and those `[catalog.<name>]`
    /// declares; `products` are the ones it syncs.
    pub catalog: Catalog,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: Url,
    pub subscriber_id: Option<String>,
    pub poll_interval: Duration,
    pub poll_max: Duration,
    pub job_timeout: Duration,
    pub max_concurrent_jobs: usize,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    /// The longest `Retry-After` waited out within a run; a server asking for longer defers the
    /// window to a later cycle.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub token_url: Url,
    pub client_id: Option<String>,
    /// `client_secret`, or `client_secret_file` (read again at each token refresh).
    pub client_secret: Option<SecretSource>,
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct LakeSettings {
    pub url: Url,
    pub target_file_size: u64,
    pub max_uncompressed_size: u64,
    /// The share of a closed status day's rows a window may remove without being forced.
    pub max_shrink: f64,
    /// `lake.format`: the plain Hive layout or a Delta Lake table over the same paths.
    pub format: TableFormat,
    /// `lake.retention` (Delta): how long files a commit removed stay for time travel and slow
    /// readers before `VACUUM` deletes them.
    pub retention: Duration,
    /// `lake.checkpoint_interval` (Delta): a checkpoint (and a vacuum) every this many commits.
    pub checkpoint_interval: u64,
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    pub url: StateUrl,
    /// With PostgreSQL: how long the writer lease outlives its holder's last renewal, so how
    /// long a standby waits for a leader that stopped answering.
    pub lease_ttl: Duration,
    /// Finished runs, jobs and settled windows older than this are pruned after each cycle.
    pub history_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    /// `server.admin_token_file`: the bearer token `POST /admin/trigger/*` requires; created
    /// (mode 0600) by the daemon's first start when missing, read by `dpss-sync trigger`.
    /// Unset, it lies beside a SQLite state, or in the work directory.
    pub admin_token_file: Option<PathBuf>,
    /// Connections the HTTP server keeps open at once; past it new ones are closed at once.
    pub max_connections: usize,
}

/// `decode.*`: how large one value and one record of an export may be. A larger field or
/// record quarantines its row (with the first KiB of the value); memory never holds more than
/// one record's limit of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Uncompressed bytes of one export, counted at every layer (`lake.max_uncompressed_size`).
    pub max_uncompressed: u64,
    pub max_field: usize,
    pub max_record: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_uncompressed: 64 << 30,
            max_field: 1 << 20,
            max_record: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// The export file format asked of the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Csv,
    Json,
    Parquet,
    Orc,
}

impl FileType {
    pub const ALL: [FileType; 4] = [Self::Csv, Self::Json, Self::Parquet, Self::Orc];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Parquet => "parquet",
            Self::Orc => "orc",
        }
    }

    /// Case-insensitive, as the vendor's own examples mix `Json`, `csv` and `Csv`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ProductSettings {
    pub subscription_id: Option<String>,
    pub file_type: FileType,
    pub schedule: String,
    /// The zone the schedule's fields are read in; UTC unless `schedule_timezone` says otherwise.
    pub schedule_timezone: chrono_tz::Tz,
    pub lookback_days: u32,
}

impl Settings {
    /// Merges the sources and validates every key.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        for file in &sources.files {
            if !file.exists() {
                return Err(ConfigError::Source(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file.as_path()).required(true));
        }
        for text in &sources.inline {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        if sources.env {
            builder = builder.add_source(
                config::Environment::with_prefix("DPSS_SYNC")
                    .prefix_separator("__")
                    .separator("__"),
            );
        }
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Source(without_source_lines(&e.to_string())))?;
        // The cache keeps each value's origin (file or environment), which serde would drop.
        let root = merged
            .cache
            .into_table()
            .map_err(|e| ConfigError::Source(e.to_string()))?;
        Self::from_table(Table::root(root.into_iter().collect()))
    }

    fn from_table(mut root: Table) -> Result<Self, ConfigError> {
        let mut api = root.table("api")?;
        let mut auth = root.table("auth")?;
        let mut lake = root.table("lake")?;
        let mut state = root.table("state")?;
        let mut work = root.table("work")?;
        let mut server = root.table("server")?;
        let mut log = root.table("log")?;
        let mut decode = root.table("decode")?;
        let mut catalog_table = root.table("catalog")?;
        let catalog = Self::catalog(&mut catalog_table)?;
        let mut products_table = root.table("products")?;

        let max_uncompressed = lake.size("max_uncompressed_size", "64GiB")?;
        let settings = Settings {
            api: ApiSettings {
                base_url: api.url("base_url", "https://k8s.itrontotal.com")?,
                subscriber_id: api.opt_string("subscriber_id")?,
                poll_interval: api.duration("poll_interval", "30s")?,
                poll_max: api.duration("poll_max", "5m")?,
                job_timeout: api.duration("job_timeout", "2h")?,
                max_concurrent_jobs: api.positive("max_concurrent_jobs", 4)? as usize,
                request_timeout: api.duration("request_timeout", "60s")?,
                max_attempts: api.positive("max_attempts", 6)? as u32,
                max_retry_after: api.duration("max_retry_after", "10m")?,
            },
            auth: AuthSettings {
                token_url: auth.url(
                    "token_url",
                    "https://idenserver.itrontotal.com/connect/token",
                )?,
                client_id: auth.opt_string("client_id")?,
                client_secret: {
                    let value = auth.opt_string("client_secret")?;
                    let file = auth.opt_string("client_secret_file")?;
                    match (value, file) {
                        (Some(_), Some(_)) => {
                            return Err(auth.invalid(
                                "client_secret_file",
                                "set either auth.client_secret or auth.client_secret_file, not both"
                                    .into(),
                            ));
                        }
                        (Some(v), None) => Some(SecretSource::Value(Secret::new(v))),
                        (None, Some(f)) => Some(SecretSource::File(f.into())),
                        (None, None) => None,
                    }
                },
                scope: auth.string("scope", "DPSSSubscriberApi")?,
            },
            lake: LakeSettings {
                url: lake.lake_url("url", "file:///var/lib/dpss-sync/lake")?,
                target_file_size: lake.size("target_file_size", "256MiB")?,
                max_uncompressed_size: max_uncompressed,
                max_shrink: lake.fraction("max_shrink", "0.5")?,
                format: lake.parsed("format", "parquet", TableFormat::parse)?,
                retention: lake.duration("retention", "7days")?,
                checkpoint_interval: lake.positive("checkpoint_interval", 10)? as u64,
            },
            state: StateSettings {
                url: match state.state_url("url", "sqlite:///var/lib/dpss-sync/state.db")? {
                    StateUrl::Postgres { url, .. } => StateUrl::Postgres {
                        url,
                        password_file: state.opt_string("password_file")?.map(PathBuf::from),
                    },
                    sqlite => sqlite,
                },
                lease_ttl: state.duration("lease_ttl", "15s")?,
                history_retention: state.duration("history_retention", "90days")?,
            },
            work_dir: work.opt_string("dir")?.map(PathBuf::from),
            server: ServerSettings {
                listen: server.socket_addr("listen", "127.0.0.1:9464")?,
                shutdown_grace: server.duration("shutdown_grace", "30s")?,
                admin_token_file: server.opt_string("admin_token_file")?.map(PathBuf::from),
                max_connections: server.integer("max_connections", 2048, 16, 1_000_000)? as usize,
            },
            log: LogSettings {
                format: match log.string("format", "text")?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(
                            log.invalid("format", format!("`{other}` is not one of text, json"))
                        );
                    }
                },
                level: log.string("level", "info")?,
            },
            products: Self::products(&mut products_table, &catalog)?,
            catalog,
            decode: DecodeLimits {
                max_uncompressed,
                max_field: decode.size("max_field_size", "1MiB")? as usize,
                max_record: decode.size("max_record_size", "8MiB")? as usize,
            },
        };
        if settings.decode.max_field > settings.decode.max_record {
            return Err(decode.invalid(
                "max_field_size",
                "must not be larger than decode.max_record_size".into(),
            ));
        }
        if settings.api.poll_max < settings.api.poll_interval {
            return Err(api.invalid(
                "poll_max",
                "must not be shorter than api.poll_interval".into(),
            ));
        }
        for table in [
            api,
            auth,
            lake,
            state,
            work,
            server,
            log,
            decode,
            catalog_table,
            products_table,
            root,
        ] {
            table.finish()?;
        }
        Ok(settings)
    }

    /// The built-in products and those `[catalog.<name>]` declares, each checked whole: a bad
    /// declaration is an error naming its field.
    fn catalog(table: &mut Table) -> Result<Catalog, ConfigError> {
        let mut catalog = Catalog::default();
        for name in table.keys() {
            let (tree, origin) = table.tree(&name)?;
            let product =
                crate::product::declare(&name, &tree).map_err(|e| ConfigError::Invalid {
                    key: if e.field.is_empty() {
                        format!("catalog.{name}")
                    } else {
                        format!("catalog.{name}.{}", e.field)
                    },
                    origin: origin.clone(),
                    reason: e.reason,
                })?;
            if !catalog.add(product) {
                return Err(ConfigError::Invalid {
                    key: format!("catalog.{name}"),
                    origin,
                    reason: "a built-in product has this name; declare yours under another".into(),
                });
            }
        }
        Ok(catalog)
    }

    fn products(
        table: &mut Table,
        catalog: &Catalog,
    ) -> Result<BTreeMap<Product, ProductSettings>, ConfigError> {
        let mut products = BTreeMap::new();
        for name in table.keys() {
            let Some(product) = catalog.get(&name) else {
                return Err(ConfigError::UnknownKey {
                    key: format!("products.{name}"),
                    origin: format!(
                        " (known products: {}; declare another under [catalog.{name}])",
                        catalog.names().join(", ")
                    ),
                });
            };
            let mut p = table.table(&name)?;
            let file_type_raw = p.string("file_type", "parquet")?;
            let settings = ProductSettings {
                subscription_id: p.opt_string("subscription_id")?,
                file_type: FileType::parse(&file_type_raw).ok_or_else(|| {
                    p.invalid(
                        "file_type",
                        format!("`{file_type_raw}` is not one of csv, json, parquet, orc"),
                    )
                })?,
                schedule: p.cron("schedule", "0 */15 * * * *")?,
                schedule_timezone: {
                    let zone = p.string("schedule_timezone", "UTC")?;
                    zone.parse().map_err(|_| {
                        p.invalid(
                            "schedule_timezone",
                            format!(
                                "`{zone}` is not an IANA time zone (e.g. UTC, America/Chicago)"
                            ),
                        )
                    })?
                },
                lookback_days: p.integer("lookback_days", 2, 0, 366)? as u32,
            };
            p.finish()?;
            products.insert(product, settings);
        }
        Ok(products)
    }

    /// The keys the vendor API needs, checked by the commands that call it.
    pub fn require_api(&self) -> Result<(), ConfigError> {
        let hint = |var: &str| format!("set it in a config file or in {var}");
        if self.api.subscriber_id.is_none() {
            return Err(ConfigError::Missing {
                key: "api.subscriber_id".into(),
                hint: hint("DPSS_SYNC__API__SUBSCRIBER_ID"),
            });
        }
        if self.auth.client_id.is_none() {
            return Err(ConfigError::Missing {
                key: "auth.client_id".into(),
                hint: hint("DPSS_SYNC__AUTH__CLIENT_ID"),
            });
        }
        if self.auth.client_secret.is_none() {
            return Err(ConfigError::Missing {
                key: "auth.client_secret".into(),
                hint: format!(
                    "{} (or name a file holding it in auth.client_secret_file)",
                    hint("DPSS_SYNC__AUTH__CLIENT_SECRET")
                ),
            });
        }
        if self.products.is_empty() {
            return Err(ConfigError::Missing {
                key: "products".into(),
                hint: format!(
                    "configure at least one [products.<name>] (known: {})",
                    self.catalog.names().join(", ")
                ),
            });
        }
        for (product, p) in &self.products {
            if p.subscription_id.is_none() {
                let name = product.config_name();
                return Err(ConfigError::Missing {
                    key: format!("products.{name}.subscription_id"),
                    hint: hint(&format!(
                        "DPSS_SYNC__PRODUCTS__{}__SUBSCRIPTION_ID",
                        name.to_ascii_uppercase()
                    )),
                });
            }
        }
        Ok(())
    }

    /// A configured product by name (`--product NAME`), or an error naming what is known.
    pub fn configured(&self, name: &str) -> Result<Product, ConfigError> {
        match self.catalog.get(name) {
            Some(p) if self.products.contains_key(&p) => Ok(p),
            Some(_) => Err(ConfigError::Missing {
                key: format!("products.{name}"),
                hint: "the product is known but not configured: add [products.{name}]"
                    .replace("{name}", name),
            }),
            None => Err(ConfigError::Invalid {
                key: "--product".into(),
                origin: String::new(),
                reason: format!(
                    "unknown product `{}` (known: {})",
                    crate::model::shown(name),
                    self.catalog.names().join(", ")
                ),
            }),
        }
    }

    /// The settings of one product, or a configuration error naming it.
    pub fn product(&self, product: Product) -> Result<&ProductSettings, ConfigError> {
        self.products
            .get(&product)
            .ok_or_else(|| ConfigError::Missing {
                key: format!("products.{}", product.config_name()),
                hint: "the product is not configured".into(),
            })
    }

    /// The admin token's file: `server.admin_token_file`, else beside a SQLite state, else in
    /// the work directory (with PostgreSQL each replica keeps its own).
    pub fn admin_token_file(&self) -> PathBuf {
        self.server
            .admin_token_file
            .clone()
            .unwrap_or_else(|| match &self.state.url {
                StateUrl::Sqlite(path) => {
                    path.parent().unwrap_or(Path::new(".")).join("admin.token")
                }
                StateUrl::Postgres { .. } => self.work_dir().join("admin.token"),
            })
    }

    /// Where downloads, scratch copies and spills go: `work.dir`, else next to a SQLite state,
    /// on the volume the operator already keeps (with PostgreSQL, the system's temporary
    /// directory). A separate volume keeps a large export from filling the one the state uses.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| match &self.state.url {
                StateUrl::Sqlite(path) => path.parent().unwrap_or(Path::new(".")).join("downloads"),
                StateUrl::Postgres { .. } => std::env::temp_dir().join("dpss-sync"),
            })
    }
}

/// A parse error of a configuration file without the lines of the file it quotes: the `config`
/// crate shows the offending line, and that line may hold a secret (`client_secret = "…`).
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with('|')
                || t.split_once('|')
                    .is_some_and(|(n, _)| n.trim().parse::<u64>().is_ok()))
        })
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
