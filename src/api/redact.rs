//! Download links carry a SAS signature in their query string: a bearer secret for the blob.
//! Every log line and error shows the link through [`redact_url`].

/// `https://host/path?<redacted>`: enough to tell links apart, nothing to replay them with.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            u.set_query(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            let mut s = u.to_string();
            if had_query {
                s.push_str("?<redacted>");
            }
            s
        }
        Err(_) => "<unparseable url>".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_is_dropped() {
        let r = super::redact_url(
            "https://acct.blob.core.windows.net/raw/A/A.zip?sv=1&sig=SECRET&se=x",
        );
        assert_eq!(
            r,
            "https://acct.blob.core.windows.net/raw/A/A.zip?<redacted>"
        );
        assert!(!r.contains("SECRET"));
        assert_eq!(
            super::redact_url("not a url ?sig=SECRET"),
            "<unparseable url>"
        );
    }
}
