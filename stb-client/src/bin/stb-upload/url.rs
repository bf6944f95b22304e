//! `ftp://USER@HOST[:PORT]/REMOTE/PATH`, read strictly enough to give one clear error.

use std::fmt;

/// The parts of an upload URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FtpUrl {
    /// Login name (percent-decoded).
    pub user: String,
    /// Host name or address (IPv6 without its brackets).
    pub host: String,
    /// Control port.
    pub port: u16,
    /// Remote path as sent to the server (percent-decoded, relative to the login directory
    /// unless it starts with `/`, written `%2F` or `//` in the URL). Empty or ending in `/`
    /// when the URL names a directory.
    pub path: String,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not `ftp://`.
    Scheme,
    /// No `USER@`.
    NoUser,
    /// `USER:PASSWORD@`: passwords in URLs leak through process lists and shell history.
    PasswordInUrl,
    /// No host.
    NoHost,
    /// A port that is not a number from 1 to 65535.
    BadPort(String),
    /// Nothing after the host.
    NoPath,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    Encoding,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme => f.write_str("it must start with ftp://"),
            UrlError::NoUser => f.write_str("it names no user (ftp://USER@HOST/PATH)"),
            UrlError::PasswordInUrl => f.write_str(
                "it contains a password; use --password-stdin or the STB_PASSWORD variable",
            ),
            UrlError::NoHost => f.write_str("it names no host"),
            UrlError::BadPort(p) => write!(f, "port {p:?} is not a number from 1 to 65535"),
            UrlError::NoPath => f.write_str("it names no remote path (ftp://USER@HOST/PATH)"),
            UrlError::Encoding => f.write_str("it has a bad %-escape or is not UTF-8"),
        }
    }
}

impl std::error::Error for UrlError {}

impl FtpUrl {
    /// Parses an upload URL.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let rest = s
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case("ftp://"))
            .map(|_| &s[6..])
            .ok_or(UrlError::Scheme)?;
        let (authority, path) = rest.split_once('/').ok_or(UrlError::NoPath)?;
        let (userinfo, hostport) = authority.rsplit_once('@').ok_or(UrlError::NoUser)?;
        if userinfo.contains(':') {
            return Err(UrlError::PasswordInUrl);
        }
        let user = decode(userinfo)?;
        if user.is_empty() {
            return Err(UrlError::NoUser);
        }
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let path = match path.strip_prefix('/') {
            Some(abs) => format!("/{}", decode(abs)?),
            None => decode(path)?,
        };
        Ok(FtpUrl {
            user,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The path to upload to, naming `local_name` when the URL ends in a directory.
    pub fn remote_path(&self, local_name: &str) -> String {
        if self.path.is_empty() || self.path.ends_with('/') {
            format!("{}{local_name}", self.path)
        } else {
            self.path.clone()
        }
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, u16), UrlError> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| UrlError::BadPort(p.to_string()))?,
                ),
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => 21,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| UrlError::BadPort(p.to_string()))?,
    };
    Ok((host, port))
}

fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UrlError::Encoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::Encoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Encoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(user: &str, host: &str, port: u16, path: &str) -> FtpUrl {
        FtpUrl {
            user: user.into(),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn parses_upload_urls() {
        let cases = [
            (
                "ftp://stb@box.example:2121/rec/a.ts",
                url("stb", "box.example", 2121, "rec/a.ts"),
            ),
            (
                "FTP://stb@10.0.0.1/a.ts",
                url("stb", "10.0.0.1", 21, "a.ts"),
            ),
            ("ftp://stb@[::1]:21/a.ts", url("stb", "::1", 21, "a.ts")),
            ("ftp://stb@[::1]/a.ts", url("stb", "::1", 21, "a.ts")),
            (
                "ftp://me%40home@h/my%20rec.ts",
                url("me@home", "h", 21, "my rec.ts"),
            ),
            ("ftp://stb@h//srv/a.ts", url("stb", "h", 21, "/srv/a.ts")),
            ("ftp://stb@h/%2Fsrv/a.ts", url("stb", "h", 21, "/srv/a.ts")),
            ("ftp://stb@h/dir/", url("stb", "h", 21, "dir/")),
        ];
        for (s, want) in cases {
            assert_eq!(FtpUrl::parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn directory_urls_take_the_local_name() {
        let u = FtpUrl::parse("ftp://stb@h/dir/").unwrap();
        assert_eq!(u.remote_path("rec.ts"), "dir/rec.ts");
        let u = FtpUrl::parse("ftp://stb@h/").unwrap();
        assert_eq!(u.remote_path("rec.ts"), "rec.ts");
        let u = FtpUrl::parse("ftp://stb@h/x.ts").unwrap();
        assert_eq!(u.remote_path("rec.ts"), "x.ts");
    }

    #[test]
    fn refuses_bad_urls() {
        let cases = [
            ("http://stb@h/a", UrlError::Scheme),
            ("ftp:/stb@h/a", UrlError::Scheme),
            ("ftp://h/a", UrlError::NoUser),
            ("ftp://@h/a", UrlError::NoUser),
            ("ftp://stb:pw@h/a", UrlError::PasswordInUrl),
            ("ftp://stb@/a", UrlError::NoHost),
            ("ftp://stb@h:0/a", UrlError::BadPort("0".into())),
            ("ftp://stb@h:x/a", UrlError::BadPort("x".into())),
            ("ftp://stb@h:70000/a", UrlError::BadPort("70000".into())),
            ("ftp://stb@[::1]x/a", UrlError::BadPort("x".into())),
            ("ftp://stb@h", UrlError::NoPath),
            ("ftp://stb@h/a%2", UrlError::Encoding),
            ("ftp://stb@h/a%zz", UrlError::Encoding),
            ("ftp://stb@h/a%ff", UrlError::Encoding),
        ];
        for (s, want) in cases {
            assert_eq!(FtpUrl::parse(s), Err(want), "{s}");
        }
    }
}
