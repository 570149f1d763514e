//! Just enough HTTP/1.1 for probes and scrapes: one GET per connection, answered and closed.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head accepted; probes and scrapers send a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// The parts of a request line the admin endpoints care about.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// Without the query string.
    pub path: String,
}

/// Why a request cannot be answered normally.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// The head is longer than [`MAX_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request line.
    Malformed,
    /// The peer closed before sending a whole head.
    Closed,
}

/// Parses a request head; `Ok(None)` while the blank line ending it has not arrived.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, BadRequest> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Tolerate bare LF line ends, as many HTTP servers do.
        if buf.windows(2).any(|w| w == b"\n\n") {
            return parse_line(buf).map(Some);
        }
        return if buf.len() >= MAX_HEAD {
            Err(BadRequest::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD {
        return Err(BadRequest::TooLarge);
    }
    parse_line(&buf[..end]).map(Some)
}

fn parse_line(head: &[u8]) -> Result<Head, BadRequest> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| BadRequest::Malformed)?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// Reads one request head from `stream`.
pub async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Head, BadRequest> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(head) = parse_head(&buf)? {
            return Ok(head);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| BadRequest::Closed)?;
        if n == 0 {
            return Err(BadRequest::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An answer to write back.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Sent as `Allow:` with 405.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into().into_bytes();
        body.push(b'\n');
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            allow: None,
        }
    }

    /// Writes the response, then closes the connection: one request per connection keeps this simple,
    /// and probes and scrapes are seconds apart.
    pub async fn write<S: AsyncWriteExt + Unpin>(&self, stream: &mut S, with_body: bool) {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        if with_body {
            let _ = stream.write_all(&self.body).await;
        }
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let ok = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            ok,
            Some(Head {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(parse_head(b"GET /readyz HTTP/1.1\r\nHost"), Ok(None));
        assert!(parse_head(b"GET /healthz HTTP/1.0\n\n").unwrap().is_some());
        for bad in [
            &b"\x00\xff\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET /a /b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(BadRequest::Malformed), "{bad:?}");
        }
        let huge = vec![b'a'; MAX_HEAD];
        assert_eq!(parse_head(&huge), Err(BadRequest::TooLarge));
    }
}
