//! What the server and an expression worker say to each other: one request, one response,
//! each a JSON message behind its length (4 bytes, little-endian), over the worker's standard
//! input and output. Payloads travel as JSON inside the message, not as strings of JSON.

use crate::clock::Millis;
use crate::config::expr::Expr;
use crate::engine::run::Rendered;
use crate::engine::{Advance, EventInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest message either side accepts: what a worker answers is bounded by it before the
/// server allocates room for it.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Longest string a worker answers for a source's event type or idempotency key.
pub const MAX_READ: usize = 64 * 1024;

/// The most items one page of a polling source may give, and their bytes in all.
pub const MAX_ITEMS: usize = 10_000;
pub const MAX_ITEMS_BYTES: usize = 16 * 1024 * 1024;

/// A flow's program as JSON, with a digest of that text so that a worker compiles each program
/// once (`Flow::wire`).
#[derive(Serialize, Deserialize)]
pub struct ProgramRef<'a> {
    pub digest: u64,
    #[serde(borrow)]
    pub program: &'a RawValue,
}

/// A run's context on the wire (see `engine::RunContext`).
#[derive(Serialize, Deserialize)]
pub struct Context<'a> {
    pub event: EventInfo,
    #[serde(borrow)]
    pub raw: &'a RawValue,
    /// The transformed payload, as a one-element array (a `null` payload is not "none").
    #[serde(borrow, default)]
    pub payload: Option<[&'a RawValue; 1]>,
    #[serde(default)]
    pub steps: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
pub enum Request<'a> {
    /// Compile each expression and say what is wrong with it.
    Check(Vec<Expr>),
    /// A new event's first steps, one run per program.
    Plan {
        #[serde(borrow)]
        programs: Vec<ProgramRef<'a>>,
        #[serde(borrow)]
        context: Context<'a>,
        now: Millis,
    },
    /// A run's pure steps from `start` (with `dry`, the whole flow as `ferry flow test` shows it).
    Advance {
        #[serde(borrow)]
        program: ProgramRef<'a>,
        #[serde(borrow)]
        context: Context<'a>,
        start: usize,
        now: Millis,
        dry: bool,
    },
    /// The request of the `http` step at `pc`.
    RenderHttp {
        #[serde(borrow)]
        program: ProgramRef<'a>,
        #[serde(borrow)]
        context: Context<'a>,
        pc: usize,
    },
    /// jq truthiness of `expr` on each payload (the API's event filters).
    Truthy {
        expr: Expr,
        #[serde(borrow)]
        payloads: Vec<&'a RawValue>,
    },
    /// `expr`'s first output as a string (a source's event type or idempotency key).
    Read {
        expr: Expr,
        #[serde(borrow)]
        payload: &'a RawValue,
    },
    /// Every output of `expr` as JSON text (a polling source's items of a page).
    Items {
        expr: Expr,
        #[serde(borrow)]
        payload: &'a RawValue,
    },
}

/// What one run's steps did, and the context they left.
#[derive(Serialize, Deserialize)]
pub struct Ran {
    pub advance: Advance,
    #[serde(with = "crate::engine::json_bytes", default)]
    pub payload: Option<bytes::Bytes>,
    #[serde(default)]
    pub steps: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
pub enum Response {
    Checked(Vec<Result<(), String>>),
    Planned(Vec<Ran>),
    Advanced(Ran),
    Rendered(Result<Rendered, String>),
    Truthy(Vec<Result<bool, String>>),
    Read(Result<Option<String>, String>),
    Items(Result<Vec<String>, String>),
    /// The worker could not read the request, or a panic stopped it.
    Refused(String),
}

/// A message with its length in front, ready to write.
pub fn frame<T: Serialize>(message: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, message).map_err(|e| format!("cannot write a message: {e}"))?;
    let len = out.len() - 4;
    if len > MAX_MESSAGE {
        return Err(format!(
            "a message of {len} bytes is over the limit of {MAX_MESSAGE}"
        ));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// The length a message's first 4 bytes announce, refused over [`MAX_MESSAGE`].
pub fn announced_length(header: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(format!(
            "a message of {len} bytes is over the limit of {MAX_MESSAGE}"
        ));
    }
    Ok(len)
}
