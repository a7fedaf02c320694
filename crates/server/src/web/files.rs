//! Downloads and uploads over plain HTTP, for the browser: a download is a link the browser's
//! own download manager fetches (and resumes, with `Range`), an upload a request body the page
//! can show progress for and cancel. Both act for the user of the token's session, through the
//! same shared-folder checks as the native `download` and `upload` requests.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use http_range_header::{EndPosition, StartPosition};
use parley_proto::ErrorCode;
use parley_proto::limits::MAX_DATA_CHUNK;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::timeout;
use tokio_util::io::ReaderStream;
use tracing::info;

use super::grants::{Authorized, SignedIn};
use super::{refused, refused_as};
use crate::files::OpenFile;
use crate::hub::Refusal;
use crate::session::Context;
use crate::transfer::{Progress, Upload};

/// Bytes read from the file per chunk of a download's body. Each read is a trip to tokio's
/// blocking threads and back: at 64 KiB, a gigabyte took 16,000 of them and the futex
/// wake-ups were the largest share of the server's time (measured: 1,162 MB/s, nginx 2,562).
/// Memory per download stays this one chunk, whatever the file's size.
const READ_CHUNK: usize = 1024 * 1024;

/// `GET /files/<path>`: the file, whole or the one range asked for.
pub(super) async fn download(
    State(ctx): State<Arc<Context>>,
    SignedIn(grant): SignedIn,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let shared = ctx.shared.clone();
    let opened = tokio::task::spawn_blocking(move || shared.open_file(&grant.name, &path)).await;
    let open = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(refusal)) => return refused(refusal),
        Err(err) => return refused(read_failed(err)),
    };
    let tag = format!("\"{}\"", open.stamp.tag());
    let (status, start, len) = match wanted_range(&headers, &tag, open.size) {
        Wanted::Whole => (StatusCode::OK, 0, open.size),
        Wanted::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Wanted::Unsatisfiable => {
            let range = format!("bytes */{}", open.size);
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, range)],
            )
                .into_response();
        }
    };
    let OpenFile {
        file, name, size, ..
    } = open;
    let mut file = tokio::fs::File::from_std(file);
    if let Err(err) = file.seek(SeekFrom::Start(start)).await {
        return refused(read_failed(err));
    }
    // Streamed: a chunk at a time, whatever the file's size.
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), READ_CHUNK));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let value = |text: String| HeaderValue::try_from(text).expect("ASCII by construction");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, value(len.to_string()));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, value(tag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    headers.insert(header::CONTENT_DISPOSITION, value(disposition(&name)));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", start + len - 1);
        headers.insert(header::CONTENT_RANGE, value(range));
    }
    response
}

/// What part of a file a request wants.
#[derive(Debug, PartialEq)]
enum Wanted {
    Whole,
    /// The bytes from the first to the second offset, both included.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads the `Range` header, honoured when there is one range and `If-Range` (if sent) names
/// the file's current version; several ranges, or any of an empty file, get the whole file,
/// which HTTP allows.
fn wanted_range(headers: &HeaderMap, tag: &str, size: u64) -> Wanted {
    let Some(range) = headers.get(header::RANGE).and_then(|r| r.to_str().ok()) else {
        return Wanted::Whole;
    };
    // A resumed download after the file changed must start over, not splice two versions.
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != tag.as_bytes()
    {
        return Wanted::Whole;
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        // A header that does not parse is ignored (RFC 9110, 14.2).
        return Wanted::Whole;
    };
    // Several ranges would need a multipart answer; an empty file has no range to give.
    let ([one], false) = (parsed.ranges.as_slice(), size == 0) else {
        return Wanted::Whole;
    };
    let last = size - 1;
    match (one.start, one.end) {
        // A suffix longer than the file is the whole file.
        (StartPosition::FromLast(len), _) => Wanted::Part(size.saturating_sub(len), last),
        (StartPosition::Index(start), _) if start > last => Wanted::Unsatisfiable,
        (StartPosition::Index(start), EndPosition::LastByte) => Wanted::Part(start, last),
        (StartPosition::Index(start), EndPosition::Index(end)) if end >= start => {
            Wanted::Part(start, end.min(last))
        }
        // Backwards: not a valid range, so the header is ignored.
        (StartPosition::Index(_), EndPosition::Index(_)) => Wanted::Whole,
    }
}

/// `Content-Disposition` for saving a file as `name`: an ASCII fallback for old browsers and
/// the exact name, percent-encoded (RFC 6266).
fn disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => encoded.push(byte as char),
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The server failed, not the request.
fn read_failed(err: impl std::fmt::Display) -> Refusal {
    Refusal {
        code: ErrorCode::StorageFailed,
        message: format!("Reading the file failed: {err}."),
    }
}

/// Where an upload goes.
#[derive(Deserialize)]
pub(super) struct Target {
    /// The folder, relative to the shared folder; empty for its top.
    #[serde(default)]
    folder: String,
    /// The file's name.
    name: String,
}

/// `POST /upload?folder=<folder>&name=<name>`: the body is the file. It is staged, and
/// published under its name (or the first free `name (n)`) only once every byte announced by
/// `Content-Length` has arrived and is on disk; a request that ends early leaves nothing.
pub(super) async fn upload(
    State(ctx): State<Arc<Context>>,
    Authorized(grant): Authorized,
    RawQuery(query): RawQuery,
    target: Result<Query<Target>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bad = |message: String| {
        refused(Refusal {
            code: ErrorCode::BadRequest,
            message,
        })
    };
    if !query.as_deref().is_none_or(decodes_to_utf8) {
        return bad("The folder and the name must be percent-encoded UTF-8.".into());
    }
    let Ok(Query(target)) = target else {
        return bad("Say where the file goes: /upload?folder=<folder>&name=<name>.".into());
    };
    let Some(size) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
    else {
        let refusal = Refusal {
            code: ErrorCode::BadRequest,
            message: "An upload must say its size (Content-Length).".into(),
        };
        return refused_as(StatusCode::LENGTH_REQUIRED, refusal);
    };
    let slot = match grant.start_upload() {
        Ok(slot) => slot,
        Err(refusal) => return refused(refusal),
    };
    let prepared = Upload::prepare(
        &ctx.config,
        &ctx.shared,
        &grant.name,
        &grant.holder,
        target.folder,
        target.name,
        size,
    )
    .await;
    let mut upload = match prepared {
        Ok(upload) => upload,
        Err(refusal) => return refused(refusal),
    };
    let silence = ctx.config.keepalive_timeout;
    let progress = Progress::new(ctx.config.upload_idle_timeout, size);
    if let Err(refusal) = receive(&mut upload, body, size, silence, progress).await {
        return refused(refusal);
    }
    let hash = match upload.hash().await {
        Ok(hash) => hash,
        Err(err) => return refused(not_stored(err)),
    };
    let uploaded = match upload.publish(hash, &grant.name).await {
        Ok(uploaded) => uploaded,
        Err(refusal) => return refused(refusal),
    };
    drop(slot);
    let (user, path, size) = (&grant.name, &uploaded.path, uploaded.size);
    info!("{user} shared {path:?} ({size} bytes, from the browser)");
    ctx.hub.announce_shared(grant.session, user, path, size);
    (StatusCode::CREATED, Json(uploaded)).into_response()
}

/// Writes the request body into `upload`, in chunks as large as the native protocol's, and
/// checks that exactly `size` bytes came. A body that stops coming for `silence` fails, as a
/// silent native client is dropped, and so does one that comes too slowly for `progress`, as
/// a native upload does: either would hold its promise of disk space meanwhile.
async fn receive(
    upload: &mut Upload,
    body: Body,
    size: u64,
    silence: Duration,
    mut progress: Progress,
) -> Result<(), Refusal> {
    let mut stream = body.into_data_stream();
    let mut pending = BytesMut::new();
    let broke_off = |why: String| Refusal {
        code: ErrorCode::BadRequest,
        message: format!("The upload broke off: {why}; nothing was kept."),
    };
    loop {
        // The clock runs while the body is awaited, not while the disk is.
        let Some(next) = progress.wait(timeout(silence, stream.next())).await else {
            return Err(Refusal {
                code: ErrorCode::UploadStalled,
                message: progress.stalled(),
            });
        };
        let chunk = match next {
            Ok(Some(Ok(chunk))) => Some(chunk),
            Ok(Some(Err(err))) => return Err(broke_off(err.to_string())),
            Ok(None) => None,
            Err(_) => return Err(broke_off(format!("nothing arrived for {silence:?}"))),
        };
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            let total = upload.received() + (pending.len() + chunk.len()) as u64;
            if total > size {
                return Err(Refusal {
                    code: ErrorCode::BadRequest,
                    message: format!("More data arrived than the {size} bytes announced."),
                });
            }
            progress.arrived(chunk.len() as u64);
            pending.extend_from_slice(&chunk);
        }
        if !pending.is_empty() && (done || pending.len() >= MAX_DATA_CHUNK) {
            upload
                .write(pending.split().freeze())
                .await
                .map_err(not_stored)?;
        }
        if done {
            break;
        }
    }
    if upload.received() != size {
        return Err(Refusal {
            code: ErrorCode::BadRequest,
            message: format!(
                "Only {} of the {size} bytes announced arrived; nothing was kept.",
                upload.received()
            ),
        });
    }
    Ok(())
}

/// Whether every name and value of the query `raw` percent-decodes to UTF-8. The form decoder
/// behind `Query` puts U+FFFD in place of what does not (`%c0%ae`), which would store the file
/// under a name nobody sent.
fn decodes_to_utf8(raw: &str) -> bool {
    raw.split(['&', '=']).all(|part| {
        let bytes = part.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            let hex = bytes
                .get(at + 1..at + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
            match (bytes[at], hex) {
                (b'%', Some(byte)) => {
                    decoded.push(byte);
                    at += 3;
                }
                (byte, _) => {
                    decoded.push(byte);
                    at += 1;
                }
            }
        }
        String::from_utf8(decoded).is_ok()
    })
}

fn not_stored(err: std::io::Error) -> Refusal {
    Refusal {
        code: ErrorCode::NoSpace,
        message: format!("The server could not store the file: {err}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &'static str, if_range: Option<&'static str>) -> HeaderMap {
        match if_range {
            Some(tag) => super::super::headers(&[("range", value), ("if-range", tag)]),
            None => super::super::headers(&[("range", value)]),
        }
    }

    #[test]
    fn one_range_is_served_and_others_get_the_whole_file() {
        assert_eq!(wanted_range(&HeaderMap::new(), "\"t\"", 100), Wanted::Whole);
        assert_eq!(
            wanted_range(&range("bytes=10-19", None), "\"t\"", 100),
            Wanted::Part(10, 19)
        );
        assert_eq!(
            wanted_range(&range("bytes=90-", None), "\"t\"", 100),
            Wanted::Part(90, 99)
        );
        assert_eq!(
            wanted_range(&range("bytes=-5", None), "\"t\"", 100),
            Wanted::Part(95, 99)
        );
        assert_eq!(
            wanted_range(&range("bytes=0-1,5-6", None), "\"t\"", 100),
            Wanted::Whole
        );
        assert_eq!(
            wanted_range(&range("bytes=200-", None), "\"t\"", 100),
            Wanted::Unsatisfiable
        );
        assert_eq!(
            wanted_range(&range("pages=1", None), "\"t\"", 100),
            Wanted::Whole
        );
        let cases = [
            // A suffix longer than the file is the whole file, as a part.
            ("bytes=-500", 100, Wanted::Part(0, 99)),
            ("bytes=0-1,1-2", 100, Wanted::Whole),
            // Backwards: not a range, ignored.
            ("bytes=20-10", 100, Wanted::Whole),
            ("bytes=50-5000", 100, Wanted::Part(50, 99)),
            ("bytes=100-", 100, Wanted::Unsatisfiable),
            // An empty file has no bytes to range over: it is sent, empty.
            ("bytes=0-0", 0, Wanted::Whole),
            ("bytes=0-", 0, Wanted::Whole),
        ];
        for (header, size, wanted) in cases {
            assert_eq!(
                wanted_range(&range(header, None), "\"t\"", size),
                wanted,
                "{header}"
            );
        }
    }

    #[test]
    fn a_changed_file_is_sent_whole_to_a_resumed_download() {
        let same = range("bytes=10-", Some("\"t\""));
        assert_eq!(wanted_range(&same, "\"t\"", 100), Wanted::Part(10, 99));
        let changed = range("bytes=10-", Some("\"old\""));
        assert_eq!(wanted_range(&changed, "\"t\"", 100), Wanted::Whole);
    }

    #[test]
    fn a_query_must_decode_to_utf8() {
        assert!(decodes_to_utf8("folder=Docs&name=r%C3%A9sum%C3%A9.pdf"));
        assert!(decodes_to_utf8("name=100%25+sure%zz%"));
        assert!(!decodes_to_utf8("name=%c0%ae.txt"));
        assert!(!decodes_to_utf8("folder=%ff&name=a.txt"));
    }

    #[test]
    fn any_name_can_be_saved() {
        assert_eq!(
            disposition("notes.pdf"),
            "attachment; filename=\"notes.pdf\"; filename*=UTF-8''notes.pdf"
        );
        assert_eq!(
            disposition("a \"b\" é.txt"),
            "attachment; filename=\"a _b_ _.txt\"; filename*=UTF-8''a%20%22b%22%20%C3%A9.txt"
        );
    }
}
