//! The JSON bodies of the errors actix-http answers itself. Its HTTP/1 parser refuses a
//! request head before any handler or middleware sees it (400 for a head it cannot parse,
//! 408 for a first head that does not arrive in time, 431 for one too large) and writes
//! the answer with an empty body; CONTRACT 12 wants the error body of section 3.4 on every
//! error, these included, and actix-web has no hook for them.
//!
//! So each connection's socket is wrapped, and its writing side puts the JSON answer in
//! place of such a head. The dispatcher flushes its whole write buffer each time, so the
//! bytes it hands the socket always end where its buffer ends, and the parser's answer is
//! always the last thing on the connection: it is found as the buffer's tail, with no
//! parsing of the answers before it. Nothing else can end that way: every body this
//! service writes is JSON (which escapes line breaks), Prometheus text or fixed TwiML,
//! every 400, 408 and 431 of its own carries a JSON body and its `Content-Type`, and its
//! empty answers are 200s and 500s.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's socket, writing the JSON answer in place of the parser's own.
pub struct JsonHeadErrors {
    io: TcpStream,
    /// The answer written in place of the parser's head: its bytes, how many have gone
    /// out, and how long the head it replaces is. The head counts as written only once
    /// the whole answer is in the socket, so that the connection never closes mid-answer.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl JsonHeadErrors {
    pub fn new(io: TcpStream) -> Self {
        JsonHeadErrors {
            io,
            replacing: None,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }
}

/// The parser's answers are a status line and these headers, nothing more (after an
/// HTTP/1.0 request that asked to keep its connection, `connection: keep-alive`).
const PARSER_HEADERS: [&[u8]; 4] = [
    b"content-length: 0",
    b"connection: close",
    b"connection: keep-alive",
    b"date: ",
];

/// How far back from the end of a write the parser's answer can start: a status line and
/// the headers above.
const LONGEST_PARSER_HEAD: usize = 192;

/// If `written` ends with an answer of actix-http's parser: where that answer starts, and
/// the answer with the JSON error body to write in its place.
pub fn replacement(written: &[u8]) -> Option<(usize, Vec<u8>)> {
    if !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let from = written.len().saturating_sub(LONGEST_PARSER_HEAD);
    let start = from + rfind(&written[from..], b"HTTP/1.")?;
    let head = &written[start..written.len() - 4];
    let mut lines = crlf_lines(head)?.into_iter();
    let status_line = lines.next()?;
    let (code, message) = match status_line.get(8..13)? {
        b" 400 " => (
            "malformed_request",
            "the request could not be parsed as HTTP/1.1: a control character in a \
             header value, a bad request line, conflicting framing headers or a \
             malformed chunked body",
        ),
        b" 408 " => (
            "request_timeout",
            "the request head did not arrive whole within 5 s",
        ),
        b" 431 " => (
            "headers_too_large",
            "the request head is over 128 KB or has more than 96 headers",
        ),
        _ => return None,
    };
    let mut kept = Vec::new();
    let mut sized = false;
    for line in lines {
        if !PARSER_HEADERS.iter().any(|known| line.starts_with(known)) {
            return None;
        }
        if line == PARSER_HEADERS[0] {
            sized = true;
        } else {
            kept.push(line);
        }
    }
    if !sized {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut answer = Vec::with_capacity(head.len() + body.len() + 64);
    answer.extend_from_slice(status_line);
    answer.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    answer.extend_from_slice(body.len().to_string().as_bytes());
    for line in kept {
        answer.extend_from_slice(b"\r\n");
        answer.extend_from_slice(line);
    }
    answer.extend_from_slice(b"\r\n\r\n");
    answer.extend_from_slice(body.as_bytes());
    Some((start, answer))
}

/// The lines of a head, split at CRLF; none if a bare CR or LF is left in one.
fn crlf_lines(head: &[u8]) -> Option<Vec<&[u8]>> {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(&rest[..end]);
        rest = &rest[end + 2..];
    }
    lines.push(rest);
    let bare = |line: &&[u8]| line.iter().any(|&b| b == b'\r' || b == b'\n');
    (!lines.iter().any(bare)).then_some(lines)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

impl AsyncRead for JsonHeadErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonHeadErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            match replacement(buf) {
                None => return Pin::new(&mut this.io).poll_write(cx, buf),
                // The answers before it go out first, as they are.
                Some((start, _)) if start > 0 => {
                    return Pin::new(&mut this.io).poll_write(cx, &buf[..start])
                }
                Some((_, answer)) => this.replacing = Some((answer, 0, buf.len())),
            }
        }
        let Some((answer, sent, replaced)) = &mut this.replacing else {
            return Poll::Ready(Ok(0));
        };
        while *sent < answer.len() {
            match ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let replaced = *replaced;
        this.replacing = None;
        Poll::Ready(Ok(replaced))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    fn answer(written: &[u8]) -> Option<(usize, String)> {
        replacement(written).map(|(start, a)| (start, String::from_utf8(a).expect("utf-8")))
    }

    #[test]
    fn the_parsers_answers_get_the_error_body() {
        let date = "date: Mon, 07 Dec 2026 17:14:18 GMT";
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("408 Request Timeout", "request_timeout"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n{date}\r\n\r\n"
            );
            let (start, text) = answer(head.as_bytes()).expect("replaced");
            assert_eq!(start, 0);
            let (top, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            assert!(top.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{top}");
            assert!(
                top.contains("\r\ncontent-type: application/json\r\n"),
                "{top}"
            );
            assert!(
                top.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
                "{top}"
            );
            assert!(
                top.contains("\r\nconnection: close\r\n") && top.ends_with(date),
                "{top}"
            );
            let json: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(json["error"]["code"], code);
            assert!(json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn an_http_1_0_keep_alive_answer_is_replaced_too() {
        let head = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: keep-alive\r\ndate: x\r\n\r\n";
        let (_, text) = answer(head.as_bytes()).expect("replaced");
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
        assert!(text.ends_with("\"}}"), "{text}");
    }

    #[test]
    fn an_answer_after_others_in_the_same_write_is_found_where_it_starts() {
        let earlier = "HTTP/1.1 200 OK\r\ncontent-length: 15\r\ncontent-type: application/json\r\ndate: x\r\n\r\n{\"status\":\"ok\"}";
        let parser = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (start, text) = answer(format!("{earlier}{parser}").as_bytes()).expect("replaced");
        assert_eq!(start, earlier.len());
        assert!(text.ends_with("\"}}"), "{text}");
    }

    #[test]
    fn the_services_own_answers_pass_untouched() {
        for written in [
            // JSON bodies never end in a blank line.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}",
            // Empty answers of its own carry a content type or another status.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ncontent-type: application/json\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n",
            // A HEAD answer keeps its body's length.
            "HTTP/1.1 408 Request Timeout\r\ncontent-length: 80\r\ncontent-type: application/json\r\n\r\n",
            // The end of a chunked body.
            "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "",
            "\r\n\r\n",
        ] {
            assert!(answer(written.as_bytes()).is_none(), "{written:?}");
        }
    }
}
