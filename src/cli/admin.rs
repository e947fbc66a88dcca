//! The admin endpoint's bearer token. `POST /admin/trigger/*` runs work with the writer lease's
//! power, so being able to open a connection to the port is not enough: the caller must show the
//! token in `server.admin_token_file`, which only the daemon's user can read (the daemon creates
//! it, mode 0600, at its first start), and a request a browser page sent (it carries an
//! `Origin` header, even as a CORS "simple request") is refused whatever it carries.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use rand::Rng;

use super::CliError;
use crate::config::{Secret, SecretSource};

/// The daemon's token: read from the file, or made and written there (0600) when there is
/// none yet.
pub fn ensure(path: &Path) -> Result<Secret, CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(path, &e))?;
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()));
    match created {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the admin token (server.admin_token_file)");
            Ok(Secret::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(failed(path, &e)),
    }
}

/// The token as `dpss-sync trigger` (and a daemon restarting) reads it.
pub fn read(path: &Path) -> Result<Secret, CliError> {
    let source = SecretSource::File(path.to_path_buf());
    if let Some(warning) = source.exposure() {
        tracing::warn!("{warning}");
    }
    source.read().map_err(|e| {
        CliError::Failed(format!(
            "{e} (server.admin_token_file): is `dpss-sync run` running with this configuration? \
             It creates the token at its first start"
        ))
    })
}

fn failed(path: &Path, e: &std::io::Error) -> CliError {
    CliError::Failed(format!(
        "cannot create the admin token {} (server.admin_token_file): {e}",
        path.display()
    ))
}

/// Whether a request may use the admin endpoint: from this host, not from a web page, with the
/// token. The refusal says which, without echoing what was sent.
pub fn admit(
    headers: &HeaderMap,
    peer: SocketAddr,
    token: &Secret,
) -> Result<(), (StatusCode, String)> {
    if !peer.ip().is_loopback() {
        return Err((
            StatusCode::FORBIDDEN,
            format!("the admin endpoint answers callers on this host only, not {peer}"),
        ));
    }
    if headers.contains_key(header::ORIGIN) {
        return Err((
            StatusCode::FORBIDDEN,
            "the admin endpoint refuses requests that carry an Origin header (a web page's); use `dpss-sync trigger`".into(),
        ));
    }
    let shown = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match shown {
        Some(t) if same(t.as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err((
            StatusCode::UNAUTHORIZED,
            "the admin token does not match server.admin_token_file".into(),
        )),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "the admin endpoint needs `Authorization: Bearer <the token in server.admin_token_file>`; `dpss-sync trigger` sends it".into(),
        )),
    }
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_is_made_once_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let made = ensure(&path).unwrap();
        assert_eq!(made.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure(&path).unwrap().expose(), made.expose());
        assert_eq!(read(&path).unwrap().expose(), made.expose());
        let missing = read(&dir.path().join("none")).unwrap_err().to_string();
        assert!(missing.contains("server.admin_token_file"), "{missing}");
    }

    #[test]
    fn only_a_local_caller_with_the_token_and_no_origin_is_admitted() {
        let token = Secret::new("s3cret");
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            admit(&h, local, &token).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(
            admit(&h, local, &token).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        admit(&h, local, &token).unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        assert_eq!(
            admit(&h, remote, &token).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        let (status, why) = admit(&h, local, &token).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(why.contains("Origin"), "{why}");
        assert!(!same(b"abc", b"abd") && same(b"abc", b"abc") && !same(b"ab", b"abc"));
    }
}
