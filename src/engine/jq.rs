//! Compiling and running jq with the `jaq` crates. Owns the only contact with `jaq_core`.
//!
//! **Invariant:** this runs only inside an expression worker process (`engine::sandbox`), or in
//! tests and the fuzz targets (which only compile): a hostile program may overflow a stack,
//! allocate without bound or never finish, and only a process that can be killed and replaced
//! may run it.

use crate::config::expr::Expr;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::load::{Arena, File, Loader};
use jaq_core::path::{Part, Path};
use jaq_core::{Compiler, Ctx, Native, Vars, data::JustLut};
use std::collections::HashMap;
use std::sync::Arc;

pub use jaq_json::Val as Value;

type Filter = jaq_core::compile::Filter<Native<JustLut<Value>>>;

/// The variables an expression sees besides its input: `$event` and `$steps`.
#[derive(Clone, Default)]
pub struct Scope {
    pub event: Value,
    pub steps: Value,
}

/// jq words that can recurse or loop without bound: refused so that a flow's author learns at
/// once, not when a worker is killed at its limit.
const UNBOUNDED: [&str; 4] = ["def", "repeat", "while", "until"];

/// jq builtins and variables that reach the process rather than the event: its environment
/// (secrets), its standard input, its exit, its standard error.
const PROCESS: [&str; 12] = [
    "env",
    "$ENV",
    "input",
    "inputs",
    "halt",
    "halt_error",
    "debug",
    "stderr",
    "debug_empty",
    "stderr_empty",
    "input_filename",
    "$__prog_args",
];

/// The variable a group's program picks its expression by ([`dispatch`]): Ferry's own.
const RESERVED: [&str; 1] = ["$__ferry_which"];

/// Compiles `code`: parses it, refuses the words above wherever they are in the parsed program
/// (string interpolations included), and compiles it with Ferry's globals `$event` and `$steps`.
pub fn compile(code: &str) -> Result<Filter, String> {
    screen(code)?;
    compile_screened(code)
}

/// Writes `codes` as one jq program that runs the one `$__ferry_which` names (counted from
/// `first`): `if $__ferry_which < 2 then (if ... ) else (...) end`, a balanced tree, so that
/// picking one costs a comparison per level.
fn dispatch(codes: &[&str], first: usize, out: &mut String) {
    match codes {
        [] => out.push_str("empty"),
        [code] => {
            out.push_str("(\n");
            out.push_str(code);
            out.push_str("\n\n)");
        }
        _ => {
            let half = codes.len() / 2;
            out.push_str(&format!("if $__ferry_which < {} then ", first + half));
            dispatch(&codes[..half], first, out);
            out.push_str(" else ");
            dispatch(&codes[half..], first + half, out);
            out.push_str(" end");
        }
    }
}

/// Compiles `codes`, which [`screen`] passed, as one group's program ([`dispatch`]).
fn compile_group(codes: &[Arc<str>]) -> Result<Filter, String> {
    let codes: Vec<&str> = codes.iter().map(|c| &**c).collect();
    let mut text = String::new();
    dispatch(&codes, 0, &mut text);
    compile_with(&text, &GROUP_GLOBALS)
}

/// Lexes and parses `code` alone, and refuses the words above anywhere in it.
fn screen(code: &str) -> Result<(), String> {
    let tokens = jaq_core::load::Lexer::new(code).lex().map_err(|errs| {
        errs.into_iter()
            .map(|(expect, at)| format!("expected {} at {}", expect.as_str(), position(code, at)))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let term = jaq_core::load::Parser::new(&tokens)
        .parse(|p| p.term())
        .map_err(|errs| {
            errs.into_iter()
                .map(|(expect, found)| {
                    let at = jaq_core::load::lex::Token::opt_as_str(found, code);
                    format!("expected {} at {}", expect.as_str(), position(code, at))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    if let Some(word) = refused_in(&term) {
        let why = if UNBOUNDED.contains(&word) {
            "it can recurse or loop without bound"
        } else if RESERVED.contains(&word) {
            "the name is Ferry's own"
        } else {
            "expressions see the event and the run, not the process (its environment, its input, its logs)"
        };
        return Err(format!(
            "`{word}` is not allowed in Ferry expressions: {why}"
        ));
    }
    Ok(())
}

/// Ferry's globals, as every expression sees them.
const GLOBALS: [&str; 2] = ["$event", "$steps"];

/// The globals of a group's program: Ferry's, and the one that picks an expression
/// ([`dispatch`]). Expressions compiled alone do not have it, so none can read it.
const GROUP_GLOBALS: [&str; 3] = ["$event", "$steps", "$__ferry_which"];

/// Compiles `code`, which [`screen`] passed, with the standard library and Ferry's globals.
fn compile_screened(code: &str) -> Result<Filter, String> {
    compile_with(code, &GLOBALS)
}

/// Compiles `code` with the standard library and `globals`.
fn compile_with(code: &str, globals: &[&'static str]) -> Result<Filter, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let mut parts = Vec::new();
            for (_file, err) in errs {
                match err {
                    jaq_core::load::Error::Io(items) => parts.extend(
                        items
                            .into_iter()
                            .map(|(path, msg)| format!("cannot load `{path}`: {msg}")),
                    ),
                    jaq_core::load::Error::Lex(items) => {
                        parts.extend(items.into_iter().map(|(expect, at)| {
                            format!("expected {} at {}", expect.as_str(), position(code, at))
                        }))
                    }
                    jaq_core::load::Error::Parse(items) => {
                        parts.extend(items.into_iter().map(|(expect, at)| {
                            format!("expected {} at {}", expect.as_str(), position(code, at))
                        }))
                    }
                }
            }
            parts.join("; ")
        })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(globals.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            errs.into_iter()
                .flat_map(|(_file, undefined)| undefined)
                .map(|(name, kind)| {
                    format!(
                        "undefined {} `{name}` at {}",
                        kind.as_str(),
                        position(code, name)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// The first refused word that `term` defines, calls or reads.
fn refused_in<'s>(term: &Term<&'s str>) -> Option<&'static str> {
    let word = |name: &str| {
        UNBOUNDED
            .iter()
            .chain(&PROCESS)
            .chain(&RESERVED)
            .find(|w| **w == name)
            .copied()
    };
    let all = |terms: &mut dyn Iterator<Item = &Term<&'s str>>| {
        for t in terms {
            if let Some(w) = refused_in(t) {
                return Some(w);
            }
        }
        None
    };
    match term {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) => None,
        Term::Var(name) => word(name),
        Term::Str(_, parts) => all(&mut parts.iter().filter_map(|p| match p {
            StrPart::Term(t) => Some(t),
            _ => None,
        })),
        Term::Arr(inner) => inner.as_deref().and_then(refused_in),
        Term::Obj(entries) => all(&mut entries
            .iter()
            .flat_map(|(k, v)| std::iter::once(k).chain(v.as_ref()))),
        Term::Neg(t) | Term::Label(_, t) => refused_in(t),
        Term::BinOp(l, op, r) => {
            let pattern = match op {
                BinaryOp::Pipe(Some(p)) => refused_in_pattern(p),
                _ => None,
            };
            pattern.or_else(|| refused_in(l)).or_else(|| refused_in(r))
        }
        Term::Fold(_, xs, pattern, args) => refused_in(xs)
            .or_else(|| refused_in_pattern(pattern))
            .or_else(|| all(&mut args.iter())),
        Term::TryCatch(t, catch) => refused_in(t).or_else(|| catch.as_deref().and_then(refused_in)),
        Term::IfThenElse(cases, otherwise) => all(&mut cases
            .iter()
            .flat_map(|(c, t)| [c, t])
            .chain(otherwise.as_deref())),
        Term::Def(..) => Some("def"),
        Term::Call(name, args) => word(name).or_else(|| all(&mut args.iter())),
        Term::Path(t, Path(parts)) => refused_in(t).or_else(|| {
            all(&mut parts.iter().flat_map(|(part, _)| match part {
                Part::Index(i) => vec![i],
                Part::Range(a, b) => a.iter().chain(b.iter()).collect(),
            }))
        }),
    }
}

fn refused_in_pattern(pattern: &Pattern<&str>) -> Option<&'static str> {
    match pattern {
        Pattern::Var(_) => None,
        Pattern::Arr(ps) => ps.iter().find_map(refused_in_pattern),
        Pattern::Obj(entries) => entries
            .iter()
            .find_map(|(k, p)| refused_in(k).or_else(|| refused_in_pattern(p))),
    }
}

/// Compiled programs of one worker, by their code: an expression is compiled the first time it
/// runs and reused after (a failed compile is remembered too).
///
/// jaq compiles its standard definitions into every program (about 110 KB and 0.8 ms each), so
/// expressions are not kept one to a program: once [`REGROUP_AFTER`] have been compiled alone,
/// they are compiled again together, up to [`GROUP`] in one program that runs the one its
/// variable `$__ferry_which` picks ([`dispatch`]), and the programs of one are dropped. Ten
/// thousand expressions take about forty programs rather than ten thousand.
#[derive(Default)]
pub struct Programs {
    compiled: HashMap<Arc<str>, Result<Compiled, String>>,
    /// Bytes of code in `compiled`: what its memory grows with.
    code_bytes: usize,
    /// Expressions compiled alone since the last grouping.
    alone: Vec<Arc<str>>,
    /// The expressions of the last group while it has room: grouped again with the next ones.
    open: Vec<Arc<str>>,
    /// Set in the server process, which must never compile or run jq.
    refuse: bool,
}

/// `codes` cut into groups of at most [`GROUP`] expressions and [`GROUP_BYTES`] bytes.
fn groups(codes: &[Arc<str>]) -> Vec<&[Arc<str>]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, code) in codes.iter().enumerate() {
        if at > start && (at - start == GROUP || bytes + code.len() > GROUP_BYTES) {
            out.push(&codes[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += code.len();
    }
    if start < codes.len() {
        out.push(&codes[start..]);
    }
    out
}

fn code_len(codes: &[Arc<str>]) -> usize {
    codes.iter().map(|c| c.len()).sum()
}

/// A compiled expression: its program, and its number there when the program is a group's.
#[derive(Clone)]
struct Compiled {
    filter: Arc<Filter>,
    which: Option<usize>,
}

/// Most expressions in one group's program, and most bytes of their code: a grouping, which
/// runs within the request that meets the expression that calls for it, compiles at most two
/// such programs.
const GROUP: usize = 256;
const GROUP_BYTES: usize = 64 * 1024;

/// Expressions compiled alone before they are grouped (or fewer, with [`GROUP_BYTES`] of code).
const REGROUP_AFTER: usize = 32;

/// Most expressions, and most bytes of their code, that a worker keeps; past either the cache
/// starts again (flows are compiled again on their next run). Searches with `jq` pass through
/// here too, each query an expression.
const MAX_EXPRESSIONS: usize = 100_000;
const MAX_CODE_BYTES: usize = 8 * 1024 * 1024;

impl Programs {
    /// Programs that refuse to compile anything: for the server's own use of
    /// `run::advance` on flows without expressions.
    pub fn refusing() -> Programs {
        Programs {
            refuse: true,
            ..Programs::default()
        }
    }

    fn get(&mut self, expr: &Expr) -> Result<Compiled, String> {
        if self.refuse {
            return Err(format!(
                "jq expression `{}` cannot run here: expressions run only in the expression workers",
                expr.code()
            ));
        }
        if let Some(found) = self.compiled.get(expr.code()) {
            return found.clone();
        }
        if self.compiled.len() >= MAX_EXPRESSIONS || self.code_bytes >= MAX_CODE_BYTES {
            *self = Programs::default();
        }
        self.code_bytes += expr.code().len();
        let made = compile(expr.code())
            .map(|filter| Compiled {
                filter: Arc::new(filter),
                which: None,
            })
            .map_err(|m| format!("jq expression `{}` does not compile: {m}", expr.code()));
        self.compiled.insert(expr.code_arc(), made.clone());
        if made.is_ok() {
            self.alone.push(expr.code_arc());
            if self.alone.len() >= REGROUP_AFTER || code_len(&self.alone) >= GROUP_BYTES {
                self.regroup();
            }
        }
        made
    }

    /// Compiles the expressions compiled alone, with those of the group that has room, into
    /// groups. One too large to share a group, or in a group that does not compile (none is
    /// known to: each member compiled alone), stays compiled alone.
    fn regroup(&mut self) {
        let mut members = std::mem::take(&mut self.open);
        members.append(&mut self.alone);
        for chunk in groups(&members) {
            if chunk.len() < 2 {
                continue;
            }
            let Ok(filter) = compile_group(chunk) else {
                continue;
            };
            self.keep_group(chunk, filter);
            if chunk.len() < GROUP && code_len(chunk) < GROUP_BYTES / 2 {
                self.open = chunk.to_vec();
            }
        }
    }

    /// Keeps `filter`, the program of the group `codes`, for each of them.
    fn keep_group(&mut self, codes: &[Arc<str>], filter: Filter) {
        let filter = Arc::new(filter);
        for (which, code) in codes.iter().enumerate() {
            let compiled = Compiled {
                filter: filter.clone(),
                which: Some(which),
            };
            if self.compiled.insert(code.clone(), Ok(compiled)).is_none() {
                self.code_bytes += code.len();
            }
        }
    }

    /// How many programs the compiled expressions take: for tests.
    #[cfg(test)]
    fn programs(&self) -> usize {
        let mut seen: Vec<*const Filter> = self
            .compiled
            .values()
            .filter_map(|c| c.as_ref().ok().map(|c| Arc::as_ptr(&c.filter)))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }

    /// Compiles `code` and says what is wrong with it, if anything.
    pub fn check(&mut self, expr: &Expr) -> Result<(), String> {
        self.get(expr).map(|_| ())
    }

    /// [`Self::check`] for each of `exprs`, at the cost of a compile per group rather than per
    /// expression: those that parse are compiled together in groups, which are kept for their
    /// runs. Only the members of a group that does not compile are compiled alone, to say
    /// which fail and why (as alone: a group's members cannot see each other).
    pub fn check_each(&mut self, exprs: &[Expr]) -> Vec<Result<(), String>> {
        if self.refuse {
            return exprs.iter().map(|e| self.check(e)).collect();
        }
        let mut results: Vec<Result<(), String>> = exprs.iter().map(|e| screen(e.code())).collect();
        let (at, screened): (Vec<usize>, Vec<Arc<str>>) = exprs
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_ok())
            .map(|(i, e)| (i, e.code_arc()))
            .unzip();
        if self.code_bytes + code_len(&screened) >= MAX_CODE_BYTES {
            *self = Programs::default();
        }
        let mut first = 0;
        for group in groups(&screened) {
            let places = &at[first..first + group.len()];
            first += group.len();
            match compile_group(group) {
                Ok(filter) => self.keep_group(group, filter),
                Err(_) => {
                    for (code, &i) in group.iter().zip(places) {
                        results[i] = compile_screened(code).map(|_| ());
                    }
                }
            }
        }
        results
            .into_iter()
            .zip(exprs)
            .map(|(result, e)| {
                result.map_err(|m| format!("jq expression `{}` does not compile: {m}", e.code()))
            })
            .collect()
    }

    /// The first output of `expr` run on `input` with `scope`'s variables; `None` when it yields
    /// nothing.
    pub fn first(
        &mut self,
        expr: &Expr,
        input: &Value,
        scope: &Scope,
    ) -> Result<Option<Value>, String> {
        let program = self.get(expr)?;
        let mut vars = vec![scope.event.clone(), scope.steps.clone()];
        vars.extend(program.which.map(Value::from));
        let ctx = Ctx::<JustLut<Value>>::new(&program.filter.lut, Vars::new(vars));
        let mut outputs = program.filter.id.run((ctx, input.clone()));
        match outputs.next() {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(exn)) => {
                let message = match exn.get_err() {
                    Ok(err) => err.to_string(),
                    Err(_) => "the program called `halt`, which is not allowed here".to_string(),
                };
                Err(format!("jq expression `{}` failed: {message}", expr.code()))
            }
        }
    }

    /// Every output of `expr` on `input` as JSON text (a polling source's items), refused past
    /// `max_items` outputs or `max_bytes` bytes in all.
    pub fn outputs(
        &mut self,
        expr: &Expr,
        input: &Value,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>, String> {
        let program = self.get(expr)?;
        let scope = Scope::default();
        let mut vars = vec![scope.event.clone(), scope.steps.clone()];
        vars.extend(program.which.map(Value::from));
        let ctx = Ctx::<JustLut<Value>>::new(&program.filter.lut, Vars::new(vars));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for output in program.filter.id.run((ctx, input.clone())) {
            let value = output.map_err(|exn| {
                let message = match exn.get_err() {
                    Ok(err) => err.to_string(),
                    Err(_) => "the program called `halt`, which is not allowed here".to_string(),
                };
                format!("jq expression `{}` failed: {message}", expr.code())
            })?;
            let text = value.to_string();
            bytes = bytes.saturating_add(text.len());
            if out.len() >= max_items || bytes > max_bytes {
                return Err(format!(
                    "jq expression `{}` gave more than {max_items} outputs or {max_bytes} bytes",
                    expr.code()
                ));
            }
            out.push(text);
        }
        Ok(out)
    }

    /// jq truthiness of the first output: anything but `false` and `null` is true; no output
    /// is false.
    pub fn truthy(&mut self, expr: &Expr, input: &Value) -> Result<bool, String> {
        Ok(truthy(self.first(expr, input, &Scope::default())?.as_ref()))
    }

    /// The first output as a string: strings as they are, numbers and booleans printed; null
    /// or no output is `None`.
    pub fn string(&mut self, expr: &Expr, input: &Value) -> Result<Option<String>, String> {
        Ok(match self.first(expr, input, &Scope::default())? {
            None | Some(Value::Null) => None,
            Some(Value::TStr(s)) | Some(Value::BStr(s)) => {
                Some(String::from_utf8_lossy(&s).into_owned())
            }
            Some(other) => Some(other.to_string()),
        })
    }
}

/// jq truthiness: anything but `false` and `null`; no output is false.
pub fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(v) if !matches!(v, Value::Null | Value::Bool(false)))
}

/// Parses JSON bytes into an expression input, refusing nesting deeper than
/// [`crate::json::MAX_JSON_DEPTH`] before parsing.
pub fn parse_value(bytes: &[u8]) -> Result<Value, String> {
    crate::json::check_depth(bytes)?;
    jaq_json::read::parse_single(bytes).map_err(|e| e.to_string())
}

fn position(code: &str, at: &str) -> String {
    let start = code.as_ptr() as usize;
    let here = at.as_ptr() as usize;
    if here >= start && here <= start + code.len() {
        let offset = here - start;
        if offset >= code.len() {
            "the end".to_string()
        } else {
            format!("character {}", offset + 1)
        }
    } else {
        "an unknown position".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        parse_value(s.as_bytes()).unwrap()
    }

    fn run(code: &str, input: &str) -> Result<Option<Value>, String> {
        Programs::default().first(&Expr::new(code).unwrap(), &v(input), &Scope::default())
    }

    #[test]
    fn filters_and_paths() {
        let mut p = Programs::default();
        let e = Expr::new(r#".data.plan != "free""#).unwrap();
        assert!(p.truthy(&e, &v(r#"{"data":{"plan":"pro"}}"#)).unwrap());
        assert!(!p.truthy(&e, &v(r#"{"data":{"plan":"free"}}"#)).unwrap());
        let path = Expr::new(".event").unwrap();
        let got = p.string(&path, &v(r#"{"event":"user.created"}"#)).unwrap();
        assert_eq!(got.as_deref(), Some("user.created"));
        assert_eq!(
            p.string(&path, &v(r#"{"event":7}"#)).unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(p.string(&path, &v("{}")).unwrap(), None);
        assert!(compile("map(select(.a > 1)) | length").is_ok());
    }

    #[test]
    fn compile_errors_say_where() {
        let err = compile(".a | ").err().unwrap();
        assert!(err.contains("expected"), "{err}");
        let err = compile("nosuchfn(1)").err().unwrap();
        assert!(err.contains("undefined filter `nosuchfn`"), "{err}");
        assert!(err.contains("character 1"), "{err}");
    }

    #[test]
    fn expressions_share_programs_in_groups_and_each_still_gives_its_own_answer() {
        let mut p = Programs::default();
        let input = v(r#"{"n": 1}"#);
        let scope = Scope {
            event: v(r#"{"type": "order"}"#),
            steps: Value::Null,
        };
        let scope = Scope {
            steps: v(r#"{"a": 5}"#),
            ..scope
        };
        // Every tenth reads `$event`, every tenth `$steps`: the globals keep their values in a
        // group, where the variable that picks is one more.
        let code = |i: usize| match i % 10 {
            0 => format!(r#"$event.type + "-{i}""#),
            1 => format!("$steps.a + {i}"),
            _ => format!(".n + {i} # \\"),
        };
        let answer = |i: usize| match i % 10 {
            0 => Value::from(format!("order-{i}")),
            1 => Value::from(5 + i),
            _ => Value::from(1 + i),
        };
        let exprs: Vec<Expr> = (0..600)
            .map(|i| Expr::new(&code(i)).unwrap())
            .chain([Expr::new("$event.type").unwrap()])
            .collect();
        for round in 0..2 {
            for (i, e) in exprs.iter().enumerate().take(600) {
                let got = p.first(e, &input, &scope).unwrap();
                assert_eq!(got, Some(answer(i)), "round {round}, {}", e.code());
            }
            let event = p.first(&exprs[600], &input, &scope).unwrap();
            assert_eq!(event, Some(v(r#""order""#)));
        }
        // 600 expressions in three groups (256, 256, 88), the last with room, and at most
        // REGROUP_AFTER alone.
        assert!(
            p.programs() <= 3 + REGROUP_AFTER,
            "{} programs",
            p.programs()
        );
        // The variable that picks an expression is not one an expression can read.
        let which = Expr::new("$__ferry_which").unwrap();
        assert!(p.check(&which).is_err());
        assert!(Programs::default().check_each(&[which])[0].is_err());
    }

    #[test]
    fn groups_keep_to_their_count_and_their_bytes() {
        let small: Vec<Arc<str>> = (0..600).map(|i| Arc::from(format!(".n + {i}"))).collect();
        let sizes: Vec<usize> = groups(&small).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [GROUP, GROUP, 600 - 2 * GROUP]);
        let large: Vec<Arc<str>> = (0..40)
            .map(|i| Arc::from(format!(".n + {i} {}", " ".repeat(16 * 1024 - 20))))
            .collect();
        for group in groups(&large) {
            assert!(code_len(group) <= GROUP_BYTES, "{} bytes", code_len(group));
        }
    }

    #[test]
    fn checked_together_each_expression_is_judged_as_alone() {
        let codes = [
            ".a",
            ". as $x | $x",
            "$x",
            ".b # a comment to the end of the line",
            ".c # a comment that goes on to the next line \\",
            "nope(1)",
            "label $out | 1, break $out",
            "break $out",
            "env",
            ".[",
            "$event.type == \"order\"",
        ];
        let exprs: Vec<Expr> = codes.iter().map(|c| Expr::new(c).unwrap()).collect();
        let together = Programs::default().check_each(&exprs);
        let alone: Vec<Result<(), String>> =
            exprs.iter().map(|e| Programs::default().check(e)).collect();
        assert_eq!(together, alone);
        let failed: Vec<&str> = codes
            .iter()
            .zip(&together)
            .filter(|(_, r)| r.is_err())
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(failed, ["$x", "nope(1)", "break $out", "env", ".["]);
        // All good: one compile says so.
        let good: Vec<Expr> = (0..2_000)
            .map(|i| Expr::new(&format!(".items[{i}] | select(.n > {i}) | .name")).unwrap())
            .collect();
        let mut kept = Programs::default();
        assert!(kept.check_each(&good).iter().all(Result::is_ok));
        // In groups, kept for their runs: 2,000 in 8 programs.
        assert_eq!(kept.programs(), 8);
        // A group compiles as one program, not one by one: a comment that goes on to the next
        // line does not swallow what joins them.
        let codes: Vec<Arc<str>> = [".a # ends in a backslash \\", ".b", "$event | .c"]
            .into_iter()
            .map(Arc::from)
            .collect();
        assert!(compile_group(&codes).is_ok());
    }

    #[test]
    fn refused_words_are_found_in_the_parsed_program_wherever_they_hide() {
        for (code, word) in [
            ("def f: f; f", "def"),
            ("[repeat(.)]", "repeat"),
            ("env.HOME", "env"),
            ("$ENV.HOME", "$ENV"),
            (".x | debug", "debug"),
            (r#"("forged" | stderr_empty)"#, "stderr_empty"),
            ("debug_empty", "debug_empty"),
            (r#""\(def f: f; f)""#, "def"),
            (r#""a\("b\(env | keys)")""#, "env"),
            (r#"{a: "\(input)"}"#, "input"),
            (r#"if . then 1 else ("\($ENV)") end"#, "$ENV"),
            (".[\"\\(env)\"]", "env"),
            ("reduce (env | .[]) as $x (0; .)", "env"),
            ("try error catch (halt_error)", "halt_error"),
            (". as [$a, {b: $c}] | until(false; .)", "until"),
            ("-(env | length)", "env"),
        ] {
            let err = compile(code).err().unwrap();
            assert!(
                err.contains(&format!("`{word}` is not allowed")),
                "{code}: {err}"
            );
        }
        // Words inside strings, object keys and field names are fine.
        for code in [
            r#""def \"until\" env""#,
            "{until: .env, debug: 1}",
            ".repeat.while",
            r#"{"env": 1} | .env"#,
        ] {
            if let Err(e) = compile(code) {
                panic!("{code}: {e}");
            }
        }
    }

    #[test]
    fn runtime_errors_are_values_not_panics() {
        let err = run(".a + 1", r#"{"a":"x"}"#).unwrap_err();
        assert!(err.contains("failed"), "{err}");
        assert!(run(r#"error("boom")"#, "1").unwrap_err().contains("boom"));
    }
}
