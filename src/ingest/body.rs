//! Reading a request's body under the size limit, and throwing away the rest of one that was
//! refused so that the client reads the answer.

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use bytes::BytesMut;
use http_body_util::BodyExt;

/// How much of a refused body is read and thrown away, at most, so that a client still
/// sending it reads the answer rather than a reset connection; and for how long at most.
const DRAIN_LIMIT: u64 = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a body was not read whole.
pub(super) enum BodyRefusal {
    /// Over the limit after `read` bytes; `rest` is the part not read.
    TooLarge {
        rest: Body,
        read: u64,
    },
    TimedOut(String),
    Unreadable(String),
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes. A body that arrives
/// in one piece is kept as it is, without a copy.
pub(super) async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, BodyRefusal> {
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::server::BodyTimedOut::caused(&e) {
                BodyRefusal::TimedOut(e.to_string())
            } else {
                BodyRefusal::Unreadable(e.to_string())
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        read += data.len();
        if read > limit {
            return Err(BodyRefusal::TooLarge {
                rest: body,
                read: read as u64,
            });
        }
        match single.take() {
            None if joined.is_empty() => single = Some(data),
            first => {
                if let Some(first) = first {
                    let expected = declared.map_or(0, |n| n as usize).min(limit);
                    joined.reserve(expected.max(first.len() + data.len()));
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(single.unwrap_or_else(|| joined.freeze()))
}

/// Reads and throws away what is left of a refused body, up to [`DRAIN_LIMIT`] for at most
/// [`DRAIN_TIME`], so that the client reads the answer. Nothing is read from a client that
/// waits for `100 Continue` (it has sent no body), nor when more than the limit is left (the
/// connection closes on it whatever is read).
pub(super) async fn drain(mut body: Body, headers: &HeaderMap, left: Option<u64>) {
    let expects_continue = headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || left.is_some_and(|n| n > DRAIN_LIMIT) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}
