//! The configuration's keys, defaults and messages, as operators meet them.
use super::*;

fn load(text: &str) -> Result<Settings, ConfigError> {
    Settings::load(&Sources {
        inline: vec![text.to_string()],
        ..Default::default()
    })
}

#[test]
fn defaults_fill_every_key() {
    let s = load("").unwrap();
    assert_eq!(s.api.poll_interval, Duration::from_secs(30));
    assert_eq!(s.api.job_timeout, Duration::from_secs(7200));
    assert_eq!(s.lake.target_file_size, 256 * 1024 * 1024);
    assert_eq!(
        s.state.url,
        StateUrl::Sqlite(PathBuf::from("/var/lib/dpss-sync/state.db"))
    );
    assert!(s.require_api().is_err());
}

#[test]
fn a_parse_error_names_the_place_and_never_quotes_the_line() {
    let err = load("[auth]\nclient_id = \"x\"\nclient_secret = \"hunter2-very-secret\n")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn decode_limits_and_admin_keys() {
    let s = load("").unwrap();
    assert_eq!(
        (s.decode.max_field, s.decode.max_record),
        (1 << 20, 8 << 20)
    );
    assert_eq!(s.decode.max_uncompressed, s.lake.max_uncompressed_size);
    assert_eq!(s.api.max_retry_after, Duration::from_secs(600));
    assert_eq!(
        s.admin_token_file(),
        PathBuf::from("/var/lib/dpss-sync/admin.token")
    );
    let err = load("[decode]\nmax_field_size = \"9MiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`decode.max_field_size`"), "{err}");
    let s =
        load("[server]\nadmin_token_file = \"/run/dpss/token\"\nmax_connections = 64\n").unwrap();
    assert_eq!(s.admin_token_file(), PathBuf::from("/run/dpss/token"));
    assert_eq!(s.server.max_connections, 64);
}

#[test]
fn unknown_key_is_named() {
    let err = load("[api]\npol_interval = \"1s\"\n").unwrap_err();
    assert!(err.to_string().contains("`api.pol_interval`"), "{err}");
    let err = load("[products.hid_work_order]\nsubscription_id = \"x\"\n").unwrap_err();
    assert!(
        err.to_string().contains("`products.hid_work_order`"),
        "{err}"
    );
}

#[test]
fn bad_values_are_named_with_reason() {
    for (text, key) in [
        ("[api]\npoll_interval = \"soon\"\n", "api.poll_interval"),
        (
            "[api]\nmax_concurrent_jobs = 0\n",
            "api.max_concurrent_jobs",
        ),
        ("[api]\nbase_url = \"not a url\"\n", "api.base_url"),
        ("[lake]\nurl = \"ftp://x/y\"\n", "lake.url"),
        (
            "[lake]\ntarget_file_size = \"12 parsecs\"\n",
            "lake.target_file_size",
        ),
        ("[state]\nurl = \"mysql://x\"\n", "state.url"),
        ("[state]\nurl = \"postgres:///db\"\n", "state.url"),
        (
            "[products.hid_work_orders]\nschedule = \"every day\"\n",
            "products.hid_work_orders.schedule",
        ),
        (
            "[products.hid_work_orders]\nfile_type = \"xml\"\n",
            "products.hid_work_orders.file_type",
        ),
        ("[log]\nformat = \"yaml\"\n", "log.format"),
        ("[lake]\nformat = \"iceberg\"\n", "lake.format"),
        ("[lake]\nretention = \"a week\"\n", "lake.retention"),
        (
            "[products.hid_work_orders]\nschedule_timezone = \"Mars/Olympus\"\n",
            "products.hid_work_orders.schedule_timezone",
        ),
    ] {
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
    }
}

#[test]
fn schedules_are_read_in_utc_unless_a_zone_is_named() {
    let s = load("[products.hid_work_orders]\n").unwrap();
    assert_eq!(
        s.products[&crate::product::test_support::hid()].schedule_timezone,
        chrono_tz::UTC
    );
    let s = load("[products.hid_work_orders]\nschedule_timezone = \"America/Chicago\"\n").unwrap();
    assert_eq!(
        s.products[&crate::product::test_support::hid()].schedule_timezone,
        chrono_tz::America::Chicago
    );
}

#[test]
fn url_spellings_operators_use() {
    let s =
        load("[lake]\nurl = \"/data/lake\"\n[state]\nurl = \"sqlite:/data/state.db\"\n").unwrap();
    assert_eq!(s.lake.url.as_str(), "file:///data/lake/");
    assert_eq!(
        s.state.url,
        StateUrl::Sqlite(PathBuf::from("/data/state.db"))
    );
    let s = load("[state]\nurl = \"sqlite://relative/state.db\"\n").unwrap();
    assert_eq!(
        s.state.url,
        StateUrl::Sqlite(PathBuf::from("relative/state.db"))
    );
    let s = load(
        "[state]\nurl = \"postgres://dpss:hunter2@db.internal:5432/dpss?sslmode=require\"\npassword_file = \"/run/secrets/pg\"\n",
    )
    .unwrap();
    let StateUrl::Postgres { url, password_file } = &s.state.url else {
        panic!("{:?}", s.state.url)
    };
    assert_eq!(url.host_str(), Some("db.internal"));
    assert_eq!(password_file.as_deref(), Some(Path::new("/run/secrets/pg")));
    // A password in the URL never reaches a log line or `status`.
    assert!(
        !s.state.url.to_string().contains("hunter2"),
        "{}",
        s.state.url
    );
    assert_eq!(s.work_dir(), std::env::temp_dir().join("dpss-sync"));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let s = load("[auth]\nclient_secret = \"hunter2-very-secret\"\nclient_id = \"id\"\n").unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert_eq!(
        s.auth.client_secret.unwrap().read().unwrap().expose(),
        "hunter2-very-secret"
    );
}

#[test]
fn a_secret_comes_from_the_configuration_or_a_file_not_both() {
    let s = load("[auth]\nclient_secret_file = \"/run/secrets/dpss\"\n").unwrap();
    assert_eq!(
        s.auth.client_secret,
        Some(SecretSource::File("/run/secrets/dpss".into()))
    );
    let err = load("[auth]\nclient_secret = \"x\"\nclient_secret_file = \"/f\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`auth.client_secret_file`") && err.contains("not both"),
        "{err}"
    );
}

#[test]
fn file_type_is_case_insensitive() {
    assert_eq!(FileType::parse("Json"), Some(FileType::Json));
    assert_eq!(FileType::parse("PARQUET"), Some(FileType::Parquet));
    assert_eq!(FileType::parse("xml"), None);
}

#[test]
fn annotated_example_is_valid() {
    let s = load(include_str!("../../config/example.toml")).unwrap();
    assert_eq!(
        s.products[&crate::product::test_support::hid()].file_type,
        FileType::Parquet
    );
    // The secret is left to the environment.
    assert!(
        s.require_api()
            .unwrap_err()
            .to_string()
            .contains("auth.client_secret")
    );
}

#[test]
fn demo_defaults_are_valid() {
    let s = load(DEMO_TOML).unwrap();
    assert!(
        s.products
            .contains_key(&crate::product::test_support::hid())
    );
    s.require_api().unwrap();
}
