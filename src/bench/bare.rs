//! The bare handlers `ferry bench` compares Ferry with, each run as `ferry bench-bare`: the
//! bare handler (reads the body, answers 202) and the synced bare handler (appends the body
//! to a file and answers once it is synced). Nothing of Ferry runs in them.

use axum::body::Bytes;
use std::path::Path;

/// The bare handler the figures are compared with: reads the body, answers 202.
///
/// With `synced_in`, the synced bare handler: every body is also appended to a file in that
/// folder and answered only once the file is synced. One thread writes every body queued with
/// one call and `fdatasync`s once per batch (group commit), as Ferry's store writer does, and
/// overwrites the file from its start once it holds [`crate::store::WAL_RESTART_BYTES`], as
/// Ferry's WAL is restarted. Nothing else: no parsing, no index, no database. Its throughput
/// is what a design that acknowledges only what is on disk can reach on this machine's disk,
/// so `ferry bench` reports Ferry's ingest against it as well as against the bare handler.
///
/// The synced handler's file is created here, so a folder it cannot use is an error before
/// the caller announces the handler's address.
pub fn bare_handler(synced_in: Option<&Path>) -> std::io::Result<axum::Router> {
    let appender = synced_in.map(start_appender).transpose()?;
    Ok(axum::Router::new()
        .route(
            "/in/{source}",
            axum::routing::post(move |body: Bytes| {
                let appender = appender.clone();
                async move {
                    if let Some(appender) = appender
                        && let Err(error) = append(&appender, body).await
                    {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(serde_json::json!({ "error": error })),
                        );
                    }
                    (
                        axum::http::StatusCode::ACCEPTED,
                        axum::Json(serde_json::json!({"event_id": "evt_bare"})),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" })))
}

/// Starts the synced bare handler's appender on a fresh file `appended` in `dir`.
fn start_appender(dir: &Path) -> std::io::Result<tokio::sync::mpsc::Sender<Append>> {
    let path = dir.join("appended");
    let file = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
        })
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
    let (appends, queued) = tokio::sync::mpsc::channel::<Append>(4096);
    std::thread::Builder::new()
        .name("bench-appender".into())
        .spawn(move || append_and_sync(file, queued))?;
    Ok(appends)
}

/// Hands `body` to the appender and waits until it is written and synced.
async fn append(appender: &tokio::sync::mpsc::Sender<Append>, body: Bytes) -> Result<(), String> {
    let (done, synced) = tokio::sync::oneshot::channel();
    let stopped = || "the appender has stopped".to_string();
    appender
        .send(Append { body, done })
        .await
        .map_err(|_| stopped())?;
    synced.await.unwrap_or_else(|_| Err(stopped()))
}

/// A body for the synced bare handler's appender, and where to say it is on disk.
struct Append {
    body: Bytes,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The synced bare handler's one writer: takes every body queued, writes them with one call,
/// `fdatasync`s, then answers each. Ends when the handler is gone.
fn append_and_sync(file: std::fs::File, mut queued: tokio::sync::mpsc::Receiver<Append>) {
    use std::os::unix::fs::FileExt;
    let mut at: u64 = 0;
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    while let Some(first) = queued.blocking_recv() {
        let mut next = Some(first);
        while let Some(append) = next.take() {
            batch.extend_from_slice(&append.body);
            waiting.push(append.done);
            next = queued.try_recv().ok();
        }
        if at + batch.len() as u64 > crate::store::WAL_RESTART_BYTES {
            at = 0;
        }
        let outcome = file
            .write_all_at(&batch, at)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot append to the synced bare handler's file: {e}"));
        at += batch.len() as u64;
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_synced_bare_handler_answers_only_what_its_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let folder = dir.path().join("synced");
        let handler = bare_handler(Some(&folder)).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, handler).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let sends: Vec<_> = (0..20)
            .map(|n| {
                let (client, file) = (client.clone(), folder.join("appended"));
                tokio::spawn(async move {
                    let body = format!("{{\"n\":\"body-{n:02}\"}}");
                    let answer = client
                        .post(format!("http://{addr}/in/bench"))
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    // Answered means written: the file holds the body by then.
                    let held = std::fs::read_to_string(file).unwrap();
                    (answer.status().as_u16(), held.contains(&body))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for send in sends {
            answers.push(send.await.unwrap());
        }
        assert!(answers.iter().all(|&a| a == (202, true)), "{answers:?}");
        let held = std::fs::read_to_string(folder.join("appended")).unwrap();
        for n in 0..20 {
            assert_eq!(held.matches(&format!("body-{n:02}")).count(), 1, "{held}");
        }
        server.abort();
    }

    #[test]
    fn a_synced_folder_that_cannot_be_made_is_refused_with_its_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_folder = dir.path().join("plain-file");
        std::fs::write(&not_a_folder, "x").unwrap();
        let error = bare_handler(Some(&not_a_folder.join("synced"))).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot create "), "{message}");
        assert!(message.contains("synced/appended"), "{message}");
    }
}
