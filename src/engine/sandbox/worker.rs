//! The expression worker process (`ferry expr-worker`, started by the server, never by a
//! person): it puts limits on itself, then answers requests from its standard input on its
//! standard output, one at a time, until its input closes. All jq compiling and running in
//! Ferry happens here.

use super::protocol::{
    Context, MAX_ITEMS, MAX_ITEMS_BYTES, MAX_READ, ProgramRef, Ran, Request, Response,
    announced_length, frame,
};
use crate::config::program::Program;
use crate::engine::jq::{Programs, parse_value};
use crate::engine::{EventInfo, RunContext, run};
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

/// The stack of the thread that runs expressions: deep enough for ordinary jq, and a hostile
/// program that overflows it ends this process only.
pub(crate) const STACK_SIZE: usize = 64 * 1024 * 1024;

/// Limits the worker puts on itself before it reads anything.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// Address space, in bytes (`RLIMIT_AS`): an allocation past it fails and ends the worker.
    pub memory_bytes: u64,
    /// CPU seconds one request may use (`RLIMIT_CPU`, moved on before each request).
    pub cpu_seconds: u64,
}

/// Runs the worker until its input closes. Returns an error only when it cannot start.
pub fn main(limits: WorkerLimits) -> Result<(), String> {
    set_limit(libc::RLIMIT_CORE, 0).map_err(|e| format!("cannot turn off core dumps: {e}"))?;
    ignore_stop_signals();
    let serve = std::thread::Builder::new()
        .name("ferry-expr".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            // The limit counts from what the worker has mapped once started (its code, its
            // stacks, the allocator's first reservation), so it is the room left for values.
            let mapped = mapped_bytes()?;
            set_limit(libc::RLIMIT_AS, mapped.saturating_add(limits.memory_bytes))
                .map_err(|e| format!("cannot limit the worker's memory: {e}"))?;
            serve(limits)
        })
        .map_err(|e| format!("cannot start the worker's thread: {e}"))?;
    serve
        .join()
        .map_err(|_| "the worker's thread panicked".to_string())?
}

fn serve(limits: WorkerLimits) -> Result<(), String> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut worker = Worker::default();
    let mut message = Vec::new();
    loop {
        let mut header = [0u8; 4];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("cannot read a request: {e}")),
        }
        let len = announced_length(header)?;
        message.resize(len, 0);
        input
            .read_exact(&mut message)
            .map_err(|e| format!("cannot read a request of {len} bytes: {e}"))?;
        allow_cpu(limits.cpu_seconds);
        let response =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.answer(&message)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    worker = Worker::default();
                    Response::Refused(format!("the expression worker panicked: {what}"))
                });
        let out = frame(&response).or_else(|e| frame(&Response::Refused(e)))?;
        output
            .write_all(&out)
            .and_then(|()| output.flush())
            .map_err(|e| format!("cannot write a response: {e}"))?;
    }
}

/// A worker's state between requests: the programs it has compiled.
#[derive(Default)]
struct Worker {
    programs: Programs,
    /// Flow programs by digest, with the text they were read from.
    flows: HashMap<u64, (Box<str>, Arc<Program>)>,
}

/// Most flow programs a worker keeps; past it the cache starts again.
const MAX_FLOWS: usize = 100_000;

impl Worker {
    fn answer(&mut self, message: &[u8]) -> Response {
        let request: Request = match serde_json::from_slice(message) {
            Ok(r) => r,
            Err(e) => return Response::Refused(format!("cannot read the request: {e}")),
        };
        match request {
            Request::Check(exprs) => Response::Checked(self.programs.check_each(&exprs)),
            Request::Plan {
                programs,
                context,
                now,
            } => {
                let mut ran = Vec::with_capacity(programs.len());
                for program in programs {
                    let program = match self.program(&program) {
                        Ok(p) => p,
                        Err(e) => return Response::Refused(e),
                    };
                    let mut ctx = match run_context(&context) {
                        Ok(c) => c,
                        Err(e) => return Response::Refused(e),
                    };
                    let advance =
                        run::advance(&mut self.programs, &program, &mut ctx, 0, now, false);
                    ran.push(finished(advance, ctx));
                }
                Response::Planned(ran)
            }
            Request::Advance {
                program,
                context,
                start,
                now,
                dry,
            } => {
                let (program, mut ctx) = match self.program_and_context(&program, &context) {
                    Ok(both) => both,
                    Err(e) => return Response::Refused(e),
                };
                let advance = run::advance(&mut self.programs, &program, &mut ctx, start, now, dry);
                Response::Advanced(finished(advance, ctx))
            }
            Request::RenderHttp {
                program,
                context,
                pc,
            } => {
                let (program, mut ctx) = match self.program_and_context(&program, &context) {
                    Ok(both) => both,
                    Err(e) => return Response::Refused(e),
                };
                let rendered = match program.instrs.get(pc).map(|i| &i.op) {
                    Some(crate::config::program::Op::Http(step)) => {
                        run::render_http(&mut self.programs, step, &mut ctx)
                    }
                    _ => Err(format!("instruction {pc} is not an http step")),
                };
                Response::Rendered(rendered)
            }
            Request::Truthy { expr, payloads } => Response::Truthy(
                payloads
                    .iter()
                    .map(|p| {
                        let value = parse_value(p.get().as_bytes())?;
                        self.programs.truthy(&expr, &value)
                    })
                    .collect(),
            ),
            Request::Read { expr, payload } => Response::Read(
                parse_value(payload.get().as_bytes())
                    .and_then(|value| self.programs.string(&expr, &value))
                    .and_then(|read| match read {
                        Some(s) if s.len() > MAX_READ => Err(format!(
                            "jq expression `{}` gave {} bytes; the limit is {MAX_READ}",
                            expr.code(),
                            s.len()
                        )),
                        other => Ok(other),
                    }),
            ),
            Request::Items { expr, payload } => {
                Response::Items(parse_value(payload.get().as_bytes()).and_then(|value| {
                    self.programs
                        .outputs(&expr, &value, MAX_ITEMS, MAX_ITEMS_BYTES)
                }))
            }
        }
    }

    fn program_and_context(
        &mut self,
        program: &ProgramRef<'_>,
        context: &Context<'_>,
    ) -> Result<(Arc<Program>, RunContext), String> {
        Ok((self.program(program)?, run_context(context)?))
    }

    /// The program `r` names, read from its text the first time.
    fn program(&mut self, r: &ProgramRef<'_>) -> Result<Arc<Program>, String> {
        let text = r.program.get();
        if let Some((known, program)) = self.flows.get(&r.digest)
            && **known == *text
        {
            return Ok(program.clone());
        }
        let program: Program =
            serde_json::from_str(text).map_err(|e| format!("cannot read a flow's program: {e}"))?;
        let program = Arc::new(program);
        if self.flows.len() >= MAX_FLOWS {
            self.flows.clear();
        }
        self.flows.insert(r.digest, (text.into(), program.clone()));
        Ok(program)
    }
}

fn run_context(c: &Context<'_>) -> Result<RunContext, String> {
    let event: Arc<EventInfo> = Arc::new(c.event.clone());
    let mut ctx = RunContext::new(event, Bytes::copy_from_slice(c.raw.get().as_bytes()));
    if let Some([p]) = c.payload {
        ctx.set_payload(Bytes::copy_from_slice(p.get().as_bytes()));
    }
    for (name, output) in &c.steps {
        ctx.set_step_output(name, output.clone());
    }
    Ok(ctx)
}

fn finished(advance: crate::engine::Advance, ctx: RunContext) -> Ran {
    Ran {
        advance,
        payload: ctx.transformed_payload().cloned(),
        steps: ctx.steps().clone(),
    }
}

/// The process's mapped address space, from `/proc/self/statm` (in pages).
fn mapped_bytes() -> Result<u64, String> {
    let statm = std::fs::read_to_string("/proc/self/statm")
        .map_err(|e| format!("cannot read /proc/self/statm: {e}"))?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("/proc/self/statm reads `{statm}`"))?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages.saturating_mul(page.max(4096) as u64))
}

/// A terminal's Ctrl-C and a supervisor's `SIGTERM` reach the whole process group (or
/// cgroup), the workers with the server: the server's graceful stop still needs them for the
/// run steps it lets finish. A worker ends when its input closes, which the server's exit
/// (however it ends) does, or by `SIGKILL`.
fn ignore_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; the
        // worker has no other threads yet.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limits.
    let done = unsafe { libc::setrlimit(resource, &limit) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Moves the CPU limit to what this process has used so far plus `seconds`: a request that
/// spins past it gets SIGXCPU, which ends the worker (the server's wall-clock limit is the
/// other guard).
fn allow_cpu(seconds: u64) {
    // SAFETY: getrusage fills the struct we pass; setrlimit only reads its argument.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return;
        }
        let used = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec).max(0) as u64;
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_CPU, &mut limit) != 0 {
            return;
        }
        let soft = used.saturating_add(seconds).saturating_add(1) as libc::rlim_t;
        limit.rlim_cur = soft.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_CPU, &limit);
    }
}
