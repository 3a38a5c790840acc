//! The only file that touches pyo3: coarse calls, batch variants, the GIL released where
//! cost grows with input. Errors cross once, as the classes defined in `satisfice.errors`.

use crate::dispatch::{
    cap, Constraints, DispatchTable, EmbWeights, Filtered, ModelRow, Plan, Predictor, Ranking, Rule,
};
use crate::embed as emb;
use crate::features::{self, flag, FeaturizerConfig, Message, Task};
use crate::tokens::{self, Family};
use crate::CoreError;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::buffer::PyBuffer;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PySequence, PyString, PyTuple};

pyo3::import_exception!(satisfice.errors, ConfigError);
pyo3::import_exception!(satisfice.errors, InputError);
pyo3::import_exception!(satisfice.errors, TokenizerError);

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        match e {
            CoreError::Config(m) => ConfigError::new_err(m),
            CoreError::Input(m) => InputError::new_err(m),
            CoreError::Tokenizer(m) => TokenizerError::new_err(m),
        }
    }
}

/// Inputs above this many bytes release the GIL while they are processed.
const DETACH_BYTES: usize = 16 * 1024;
/// The most latent dimensions a predictor may have (the bundled one has a handful).
const MAX_LATENT: usize = 4096;

/// Build the exact counters' tokenizers on a thread of their own, once per process: it
/// takes about a second, which the first request that needs an exact count would
/// otherwise wait (see tokens.rs).
fn start_preload() {
    PRELOAD.call_once(|| {
        // One thread for both (about two seconds): a thread per encoding would be ready
        // sooner, but would take every core of a small machine while the caller starts up.
        let spawned = std::thread::Builder::new()
            .name("satisfice-tokenizers".into())
            .spawn(tokens::preload);
        // No thread (a sandbox that forbids them): the first exact count builds instead.
        if let Ok(handle) = spawned {
            *preloader() = Some(handle);
        }
    });
}

/// Completed once `start_preload` has started the build.
static PRELOAD: std::sync::Once = std::sync::Once::new();
/// The thread `start_preload` started, until a `wait_for_tokenizers` joins it.
static PRELOADER: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(None);

fn preloader() -> std::sync::MutexGuard<'static, Option<std::thread::JoinHandle<()>>> {
    PRELOADER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Block until a tokenizer build that `start_preload` started has finished (GIL released);
/// return at once if none was started. Registered to run before every `os.fork()`: a child
/// forked mid-build would inherit a build no thread of its own ever finishes, and every
/// exact count in it would wait forever.
#[pyfunction]
fn wait_for_tokenizers(py: Python<'_>) {
    if PRELOAD.is_completed() {
        py.detach(|| {
            // Join the thread doing the build rather than finish it here: a first encode
            // gives the thread that makes it the tokenizers' per-thread caches (48 MiB for
            // the two, each a copy of a table of every short vocabulary word), which an
            // executor thread that only waited had then held for good (the server's
            // readiness wait: RssAnon 265 MiB against 201). The lock is held across the
            // join, so a second waiter waits for it too, and the thread has exited (its
            // caches unmapped) before a fork.
            let mut handle = preloader();
            if let Some(h) = handle.take() {
                drop(h.join()); // a build that panicked is retried just below, as before
            }
            drop(handle);
            tokens::preload(); // nothing left to do, unless no thread could be started
        });
    }
    if emb::started() {
        // the embedding table, likewise: a load in progress finishes before the fork
        py.detach(|| drop(emb::table()));
    }
}

/// Load the embedding table on a thread of its own, once, when a table that reads it is
/// built: the first route would otherwise spend about 10 ms (on the event loop) loading it.
fn start_table_preload() {
    TABLE_PRELOAD.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("satisfice-embed".into())
            .spawn(|| drop(emb::table()));
        drop(spawned); // no thread: the first route loads it
    });
}

static TABLE_PRELOAD: std::sync::Once = std::sync::Once::new();

/// Whether a call that may count exactly should release the GIL: a long text, or a
/// tokenizer still being built (another thread may hold the build for a second).
fn detach_for(bytes: usize) -> bool {
    bytes > DETACH_BYTES || !tokenizers_ready()
}

/// Borrow the UTF-8 of a Python str; `what` names it in the error (built only on failure).
fn text<'a>(
    s: &'a Bound<'_, PyString>,
    what: impl FnOnce() -> String,
) -> Result<&'a str, CoreError> {
    s.to_str().map_err(|_| {
        let what = what();
        CoreError::Input(format!(
            "{what} is not valid Unicode (it holds an unpaired surrogate such as '\\ud800'); \
             clean it first, e.g. text.encode('utf-8', 'replace').decode('utf-8')"
        ))
    })
}

/// `s` as an error quotes it (`{:?}`), its first 60 characters: a megabyte-long role or
/// part type had been quoted whole, into the error and every log of it.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(60) {
        None => format!("{s:?}"),
        Some((at, _)) => format!("{:?}...", &s[..at]),
    }
}

fn family(name: &str) -> Result<Family, CoreError> {
    Family::parse(name)
}

/// A prompt string, or OpenAI-style messages: `[{"role": ..., "content": str | parts}]`.
/// Returns the messages, how many image parts they carry, and how many file and audio parts
/// (whose tokens nothing here can count).
fn messages_from(obj: &Bound<'_, PyAny>) -> Result<(Vec<Message>, usize, u32), CoreError> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok((
            vec![Message {
                role: "user".into(),
                content: text(s, || "the prompt".into())?.to_owned(),
            }],
            0,
            0,
        ));
    }
    let list = items(obj).ok_or_else(|| {
        CoreError::Input(format!(
            "messages must be a str or a list of {{'role': ..., 'content': ...}} dicts, got {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    if list.is_empty() {
        return Err(CoreError::Input(
            "messages is empty: send at least one {'role': 'user', 'content': ...}".into(),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    let mut images = 0;
    let mut uncounted = 0u32;
    for (i, item) in list.iter().enumerate() {
        let get = |key: &'static str| {
            field(item, key).ok_or_else(|| {
                CoreError::Input(format!(
                    "messages[{i}] must be a dict with 'role' and 'content'"
                ))
            })
        };
        let role = match get("role")? {
            Some(r) => match r.downcast::<PyString>() {
                Ok(s) => text(s, || format!("messages[{i}].role"))?.to_owned(),
                Err(_) => {
                    return Err(CoreError::Input(format!(
                        "messages[{i}].role must be a str"
                    )))
                }
            },
            None => return Err(CoreError::Input(format!("messages[{i}] has no 'role'"))),
        };
        if !matches!(
            role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err(CoreError::Input(format!(
                "messages[{i}].role {} is not one of system, developer, user, assistant, tool",
                quoted(&role)
            )));
        }
        let given = get("content")?;
        let has_content = matches!(&given, Some(c) if !c.is_none());
        let content = match given {
            None => String::new(),
            Some(c) if c.is_none() => String::new(),
            Some(c) => {
                if let Ok(s) = c.downcast::<PyString>() {
                    text(s, || format!("messages[{i}].content"))?.to_owned()
                } else if let Some(parts) = items(&c) {
                    let mut buf = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        let part = |key: &'static str| {
                            field(p, key).ok_or_else(|| {
                                CoreError::Input(format!(
                                    "messages[{i}].content[{j}] must be a dict"
                                ))
                            })
                        };
                        let kind: String = part("type")?
                            .and_then(|t| t.extract().ok())
                            .unwrap_or_default();
                        match kind.as_str() {
                            "text" | "input_text" => {
                                if let Some(t) = part("text")? {
                                    let s = t.downcast::<PyString>().map_err(|_| {
                                        CoreError::Input(format!(
                                            "messages[{i}].content[{j}].text must be a str"
                                        ))
                                    })?;
                                    if !buf.is_empty() {
                                        buf.push('\n');
                                    }
                                    buf.push_str(text(s, || {
                                        format!("messages[{i}].content[{j}].text")
                                    })?);
                                }
                            }
                            "image_url" | "image" | "input_image" => images += 1,
                            // carried to the model; their tokens cannot be counted here
                            "input_audio" | "file" | "input_file" => uncounted += 1,
                            // a refusal in the history is text the provider bills
                            "refusal" => {
                                if let Some(t) = part("refusal")? {
                                    push_loose(&mut buf, &t, || {
                                        format!("messages[{i}].content[{j}].refusal")
                                    })?;
                                }
                            }
                            other => {
                                return Err(CoreError::Input(format!(
                                    "messages[{i}].content[{j}] has type {}; known: \
                                     text, image_url, input_audio, file, refusal",
                                    quoted(other)
                                )))
                            }
                        }
                        if len_over(p, 2) {
                            push_unknown(&mut buf, p, part_keys(&kind), || {
                                format!("messages[{i}].content[{j}]")
                            })?;
                        }
                    }
                    buf
                } else {
                    return Err(CoreError::Input(format!(
                        "messages[{i}].content must be a str, a list of parts, or None"
                    )));
                }
            }
        };
        // A dict of its role and content alone (most messages) holds none of the keys read
        // below, nor any unknown one: taken as it is, without their seven lookups (a tool
        // result goes on, to be refused for its missing tool_call_id).
        if has_content && !len_over(item, 2) && role != "tool" {
            out.push(Message { role, content });
            continue;
        }
        let mut content = content;
        // An agent's history: the assistant's tool calls (and the legacy function_call),
        // a message's `name` and a tool result's call id go to the provider with the
        // content and are billed as prompt tokens, so they count as its text.
        let calls = get("tool_calls")?.filter(|c| !c.is_none());
        // What every provider's API requires of a message, checked before anything is
        // routed or sent: a message without it had gone upstream, to be refused there
        // (`{'role': 'user'}` alone, a tool result naming no call).
        let said = has_content
            || calls.is_some()
            || [
                "function_call",
                "refusal",
                "reasoning_content",
                "audio",
                "thinking_blocks",
            ]
            .iter()
            .any(|k| matches!(field(item, k), Some(Some(v)) if !v.is_none()));
        if !said {
            return Err(CoreError::Input(format!(
                "messages[{i}] ({role}) has no 'content'{}: give it a str or a list of parts",
                if role == "assistant" {
                    " nor 'tool_calls'"
                } else {
                    ""
                }
            )));
        }
        if role == "tool" && !matches!(field(item, "tool_call_id"), Some(Some(v)) if !v.is_none()) {
            return Err(CoreError::Input(format!(
                "messages[{i}] is a tool result without 'tool_call_id': give the id of the \
                 tool call it answers"
            )));
        }
        if let Some(calls) = calls {
            let calls = items(&calls).ok_or_else(|| {
                CoreError::Input(format!("messages[{i}].tool_calls must be a list"))
            })?;
            for (j, call) in calls.iter().enumerate() {
                let what = || format!("messages[{i}].tool_calls[{j}]");
                // its id (which the tool result's tool_call_id repeats) and any other key
                push_unknown(&mut content, call, CALL_KEYS, what)?;
                // a function call's name and arguments; a custom tool's name and free-form
                // input (OpenAI's "custom" tools), billed the same way
                for (kind, keys) in [
                    ("function", ["name", "arguments"]),
                    ("custom", ["name", "input"]),
                ] {
                    let f = field(call, kind)
                        .ok_or_else(|| CoreError::Input(format!("{} must be a dict", what())))?;
                    if let Some(f) = f.filter(|f| !f.is_none()) {
                        for key in keys {
                            let v = field(&f, key).ok_or_else(|| {
                                CoreError::Input(format!("{}.{kind} must be a dict", what()))
                            })?;
                            if let Some(v) = v {
                                push_loose(&mut content, &v, || {
                                    format!("{}.{kind}.{key}", what())
                                })?;
                            }
                        }
                        push_unknown(&mut content, &f, &keys, || format!("{}.{kind}", what()))?;
                    }
                }
            }
        }
        // and what else the OpenAI wire sends of a message as given: an assistant turn's
        // `refusal` (what `message.model_dump()` puts back into a history) and the
        // `reasoning_content` some servers return and callers echo (21k tokens of it had
        // routed to an 8k window as 20 tokens); and a turn Anthropic's wire sends back as it
        // came (`anthropic_content`: a web search's call, its results and the text citing
        // them), counted as its text
        for key in [
            "function_call",
            "name",
            "tool_call_id",
            "refusal",
            "reasoning_content",
            "anthropic_content",
        ] {
            if let Some(v) = get(key)?.filter(|v| !v.is_none()) {
                match field(&v, "name") {
                    // a mapping: function_call's {name, arguments}
                    Some(_) => {
                        for sub in ["name", "arguments"] {
                            if let Some(x) = field(&v, sub).flatten() {
                                push_loose(&mut content, &x, || {
                                    format!("messages[{i}].{key}.{sub}")
                                })?;
                            }
                        }
                    }
                    // A message's name costs its own tokens and one more (OpenAI's documented
                    // accounting): written after a NUL, which no token joins to the text
                    // around it, where a line break had merged into the content's last
                    // punctuation and lost that token (200 named "Hi." turns: 1,403
                    // counted, 1,603 billed).
                    None if key == "name" => {
                        content.push('\0');
                        let mut name = String::new();
                        push_loose(&mut name, &v, || format!("messages[{i}].name"))?;
                        content.push_str(&name);
                    }
                    None => push_loose(&mut content, &v, || format!("messages[{i}].{key}"))?,
                }
            }
        }
        // a Claude model's thinking, sent back on its assistant turn (`thinking_blocks`):
        // billed as prompt tokens where it is sent, so counted as its text (an upper
        // bound for the models it is not sent to)
        // (a list, as `tool_calls` is: anything else had been read as no blocks here,
        // admitted and counted against a key's rate limit, and refused only by the wire)
        if let Some(blocks) = get("thinking_blocks")?.filter(|v| !v.is_none()) {
            let blocks = items(&blocks).ok_or_else(|| {
                CoreError::Input(format!(
                    "messages[{i}].thinking_blocks must be a list of thinking blocks"
                ))
            })?;
            for (j, b) in blocks.iter().enumerate() {
                for key in ["thinking", "data"] {
                    if let Some(Some(v)) = field(b, key) {
                        push_loose(&mut content, &v, || {
                            format!("messages[{i}].thinking_blocks[{j}].{key}")
                        })?;
                    }
                }
            }
        }
        if !has_content || len_over(item, 2) {
            push_unknown(&mut content, item, MESSAGE_KEYS, || {
                format!("messages[{i}]")
            })?;
        }
        out.push(Message { role, content });
    }
    Ok((out, images, uncounted))
}

/// The keys `messages_from` reads of a message, a content part and a tool call: any other
/// is counted by `push_unknown`. `cache_control` marks a prompt-cache breakpoint, which no
/// provider bills as text.
const MESSAGE_KEYS: &[&str] = &[
    "cache_control",
    "role",
    "content",
    "tool_calls",
    "function_call",
    "name",
    "tool_call_id",
    "refusal",
    "reasoning_content",
    "anthropic_content",
    "thinking_blocks",
];
/// A part's keys `messages_from` reads, by its type: the same key on a part of another type
/// (a `refusal` on a text part) is text the wire sends that nothing else counts.
fn part_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "text" | "input_text" => &["cache_control", "type", "text"],
        "refusal" => &["cache_control", "type", "refusal"],
        "image_url" => &["cache_control", "type", "image_url"],
        "image" => &["cache_control", "type", "image", "source"],
        "input_image" => &["cache_control", "type", "image_url", "file_id", "detail"],
        "input_audio" => &["cache_control", "type", "input_audio"],
        _ => &[
            "cache_control",
            "type",
            "file",
            "file_id",
            "file_data",
            "filename",
        ],
    }
}
const CALL_KEYS: &[&str] = &["type", "function", "custom"];

/// Whether `obj` is a dict of more than `n` keys (anything else: true, to be looked at).
fn len_over(obj: &Bound<'_, PyAny>, n: usize) -> bool {
    obj.downcast::<PyDict>().map_or(true, |d| d.len() > n)
}

/// Append each key of `obj` (a mapping) that is not in `known`, and its value, as text:
/// the OpenAI wire forwards a message, a part or a tool call as it was given, so whatever
/// else it holds (an assistant's `audio` id, a tool call's id, a key of the caller's own)
/// is sent and billed as prompt. 100 KB under a key the count did not read had been
/// counted as 20 tokens and sent to an 8k window under a cost cap it broke.
fn push_unknown(
    buf: &mut String,
    obj: &Bound<'_, PyAny>,
    known: &[&str],
    what: impl Fn() -> String,
) -> Result<(), CoreError> {
    let pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = if let Ok(d) = obj.downcast::<PyDict>() {
        d.iter().collect()
    } else if let Ok(m) = obj.downcast::<PyMapping>() {
        let items = m
            .items()
            .map_err(|_| CoreError::Input(format!("{} cannot be read", what())))?;
        items
            .iter()
            .filter_map(|kv| kv.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>().ok())
            .collect()
    } else {
        return Ok(());
    };
    for (k, v) in pairs {
        let name = k.downcast::<PyString>().ok().and_then(|s| s.to_str().ok());
        if name.is_some_and(|n| known.contains(&n)) || v.is_none() {
            continue;
        }
        let key = || format!("{}'s key {k}", what());
        push_loose(buf, &k, key)?;
        push_loose(buf, &v, || format!("{}[{k}]", what()))?;
    }
    Ok(())
}

/// Append `v`'s text to `buf` (a line apart): a str as it is, anything else (arguments
/// given as a dict, a number) as Python's str() of it, which is close to what is sent.
fn push_loose(
    buf: &mut String,
    v: &Bound<'_, PyAny>,
    what: impl Fn() -> String,
) -> Result<(), CoreError> {
    if v.is_none() {
        return Ok(());
    }
    if !buf.is_empty() {
        buf.push('\n');
    }
    match v.downcast::<PyString>() {
        Ok(s) => buf.push_str(text(s, &what)?),
        Err(_) => {
            let s = v
                .str()
                .map_err(|_| CoreError::Input(format!("{} cannot be read as text", what())))?;
            buf.push_str(text(&s, &what)?);
        }
    }
    Ok(())
}

/// The items of a list, tuple or other sequence (not a str); None for anything else.
fn items<'py>(obj: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = obj.downcast::<PyList>() {
        return Some(list.iter().collect());
    }
    if obj.is_instance_of::<PyString>() {
        return None;
    }
    let seq = obj.downcast::<PySequence>().ok()?;
    seq.try_iter().ok()?.collect::<PyResult<Vec<_>>>().ok()
}

/// `obj[key]` of a dict or other mapping: Some(None) when the key is absent, None when
/// `obj` is not a mapping.
fn field<'py>(obj: &Bound<'py, PyAny>, key: &'static str) -> Option<Option<Bound<'py, PyAny>>> {
    let key = field_name(obj.py(), key);
    if let Ok(d) = obj.downcast::<PyDict>() {
        return Some(d.get_item(&key).ok().flatten());
    }
    let m = obj.downcast::<PyMapping>().ok()?;
    Some(m.get_item(&key).ok())
}

/// A message field's name as an interned Python str. Looked up by a `&str`, each field of
/// each message had been made into a new Python str, copied and hashed again: 6 a message,
/// most of turning a short conversation into Rust (callgrind).
fn field_name<'py>(py: Python<'py>, key: &'static str) -> Bound<'py, PyString> {
    match key {
        "role" => intern!(py, "role"),
        "content" => intern!(py, "content"),
        "type" => intern!(py, "type"),
        "text" => intern!(py, "text"),
        "refusal" => intern!(py, "refusal"),
        "tool_calls" => intern!(py, "tool_calls"),
        "function" => intern!(py, "function"),
        "custom" => intern!(py, "custom"),
        "name" => intern!(py, "name"),
        "arguments" => intern!(py, "arguments"),
        "input" => intern!(py, "input"),
        "function_call" => intern!(py, "function_call"),
        "tool_call_id" => intern!(py, "tool_call_id"),
        "reasoning_content" => intern!(py, "reasoning_content"),
        "anthropic_content" => intern!(py, "anthropic_content"),
        "thinking_blocks" => intern!(py, "thinking_blocks"),
        _ => return PyString::new(py, key),
    }
    .clone()
}

/// Many prompts (each a str or a message list), copied into Rust before the GIL is released.
fn prompts_from(prompts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<Message>>> {
    let mut all = Vec::new();
    for (i, p) in prompts.try_iter()?.enumerate() {
        let (m, _, _) = messages_from(&p?).map_err(|e| match e {
            CoreError::Input(m) => CoreError::Input(format!("prompts[{i}]: {m}")),
            other => other,
        })?;
        all.push(m);
    }
    Ok(all)
}

/// A prompt's static embedding: int8[64], a unit vector scaled by 127 (all zeros when no word
/// is known). `prompt` is a str or a message list; the table loads on first use.
#[pyfunction]
fn embed<'py>(py: Python<'py>, prompt: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i8>>> {
    let (msgs, _, _) = messages_from(prompt)?;
    let t = emb::table()?;
    Ok(t.embed(&msgs).to_vec().into_pyarray(py))
}

/// Many prompts → (n, 64) int8, one boundary crossing, GIL released.
#[pyfunction]
fn embed_batch<'py>(
    py: Python<'py>,
    prompts: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<i8>>> {
    let all = prompts_from(prompts)?;
    let t = emb::table()?;
    let n = all.len();
    let flat = py.detach(|| {
        let mut flat = Vec::with_capacity(n * emb::DIM);
        for m in &all {
            flat.extend_from_slice(&t.embed(m));
        }
        flat
    });
    Ok(numpy::ndarray::Array2::from_shape_vec((n, emb::DIM), flat)
        .map_err(|e| CoreError::Config(e.to_string()))?
        .into_pyarray(py))
}

/// The router's ranking replayed over a table of plans, for every setting at once:
/// `p_good` and `est_cost` are (n, models) (a non-finite P(good) = filtered out, NaN cost =
/// unpriced), `by` is "floor" or "lambda", `forced` the rule's pick per prompt (−1: none).
/// Returns (len(settings), n) int64 picks, −1 where nothing passed. GIL released.
#[pyfunction]
#[pyo3(signature = (p_good, est_cost, settings, by, forced = None))]
fn rank<'py>(
    py: Python<'py>,
    p_good: PyReadonlyArray2<'py, f64>,
    est_cost: PyReadonlyArray2<'py, f64>,
    settings: Vec<f64>,
    by: &str,
    forced: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let (n, m) = (p_good.shape()[0], p_good.shape()[1]);
    if est_cost.shape() != p_good.shape() {
        return Err(CoreError::Input(format!(
            "est_cost has shape {:?}, p_good {:?}: they must match",
            est_cost.shape(),
            p_good.shape()
        ))
        .into());
    }
    let make: fn(f64) -> Ranking = match by {
        "floor" => Ranking::Floor,
        "lambda" => Ranking::Lambda,
        other => {
            return Err(CoreError::Input(format!(
                "by must be 'floor' or 'lambda', got {}",
                quoted(other)
            ))
            .into())
        }
    };
    if let Some(bad) = settings.iter().find(|v| v.is_nan() || **v < 0.0) {
        return Err(CoreError::Input(format!("settings must be >= 0, got {bad}")).into());
    }
    let p = p_good
        .as_array()
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    let c = est_cost
        .as_array()
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    let f: Vec<i64> = match forced {
        Some(f) if f.len() != n => {
            return Err(
                CoreError::Input(format!("forced has {} values for {n} prompts", f.len())).into(),
            )
        }
        Some(f) => f.as_array().iter().copied().collect(),
        None => vec![-1; n],
    };
    if let Some(bad) = f.iter().find(|&&j| j >= m as i64) {
        return Err(CoreError::Input(format!("forced names model {bad}, there are {m}")).into());
    }
    let out = py.detach(|| {
        let mut out = Vec::with_capacity(settings.len() * n);
        for &s in &settings {
            let r = make(s);
            for (i, &fi) in f.iter().enumerate() {
                let row = i * m..(i + 1) * m;
                let forced = (fi >= 0).then_some(fi as usize);
                out.push(
                    r.pick(&p[row.clone()], &c[row], forced)
                        .map_or(-1, |j| j as i64),
                );
            }
        }
        out
    });
    Ok(
        numpy::ndarray::Array2::from_shape_vec((settings.len(), n), out)
            .map_err(|e| CoreError::Config(e.to_string()))?
            .into_pyarray(py),
    )
}

fn total_bytes(m: &[Message]) -> usize {
    m.iter().map(|m| m.content.len()).sum()
}

fn flag_names(flags: u32) -> Vec<&'static str> {
    flag::NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Exact token count of `text` in `encoding`.
#[pyfunction]
#[pyo3(signature = (text, encoding = "o200k_base"))]
fn count_tokens(py: Python<'_>, text: &Bound<'_, PyString>, encoding: &str) -> PyResult<usize> {
    let f = family(encoding)?;
    let s = self::text(text, || "text".into())?;
    Ok(if detach_for(s.len()) {
        let owned = s.to_owned(); // copied first, then the GIL is released
        py.detach(|| tokens::count(&owned, f))
    } else {
        tokens::count(s, f)
    })
}

/// Exact count, or None as soon as it would exceed `limit` (cost ~ O(limit), not O(text)).
#[pyfunction]
#[pyo3(signature = (text, limit, encoding = "o200k_base"))]
fn count_tokens_till_limit(
    py: Python<'_>,
    text: &Bound<'_, PyString>,
    limit: &Bound<'_, PyAny>,
    encoding: &str,
) -> PyResult<Option<usize>> {
    // any limit: one past what a usize holds is none at all (as a usize, -1 or 2**70 had
    // been a raw OverflowError). Any whole number, as a usize is read (`__index__`: a
    // numpy integer too, which a PyInt argument had refused); a float is still none.
    let limit = match limit.extract::<usize>() {
        Ok(n) => n,
        Err(e) => {
            let operator = py.import(intern!(py, "operator"))?;
            let Ok(whole) = operator.call_method1(intern!(py, "index"), (limit,)) else {
                return Err(e);
            };
            if whole.lt(0)? {
                return Err(InputError::new_err(format!(
                    "limit must be a whole number >= 0, got {whole}"
                )));
            }
            usize::MAX
        }
    };
    let f = family(encoding)?;
    let s = self::text(text, || "text".into())?.to_owned();
    Ok(py.detach(|| tokens::count_till_limit(&s, f, limit)))
}

#[pyfunction]
#[pyo3(signature = (texts, encoding = "o200k_base"))]
fn count_tokens_batch(
    py: Python<'_>,
    texts: Vec<Bound<'_, PyString>>,
    encoding: &str,
) -> PyResult<Vec<usize>> {
    let f = family(encoding)?;
    let owned = texts
        .iter()
        .enumerate()
        .map(|(i, t)| text(t, || format!("texts[{i}]")).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(py.detach(|| owned.iter().map(|s| tokens::count(s, f)).collect()))
}

/// Whether exact counts are ready now: both tokenizers built (see `start_preload`). Until
/// then an exact count waits for the build, which the event loop must not do.
#[pyfunction]
fn tokenizers_ready() -> bool {
    tokens::is_loaded(tokens::Family::O200k) && tokens::is_loaded(tokens::Family::Cl100k)
}

/// `update_belief` (see dispatch.rs): the new (mean, cov) after one feedback score. The
/// covariance comes and goes as native-endian float64 bytes: its (k+1)^2 floats converted
/// one by one, to a Vec and back to a list, had been 15% of a `feedback()` call
/// (`benches/instructions.py feedback`: 97,645 against 83,320 instructions a call). The mean
/// comes back as the tuple `AbilityBelief` keeps (a list had been copied into one).
#[pyfunction]
#[pyo3(signature = (mean, cov, latent, score, scale = 1.0, offset = 0.0))]
fn update_belief<'py>(
    py: Python<'py>,
    mut mean: Vec<f64>,
    cov: &[u8],
    latent: Vec<f64>,
    score: f64,
    scale: f64,
    offset: f64,
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, pyo3::types::PyBytes>)> {
    if cov.len() % 8 != 0 {
        return Err(CoreError::Input(format!(
            "cov must be float64 bytes, got {} bytes",
            cov.len()
        ))
        .into());
    }
    let mut c: Vec<f64> = cov
        .chunks_exact(8)
        .map(|b| f64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    crate::dispatch::update_belief(&mut mean, &mut c, &latent, score, scale, offset)?;
    let out: Vec<u8> = c.iter().flat_map(|v| v.to_ne_bytes()).collect();
    Ok((PyTuple::new(py, mean)?, pyo3::types::PyBytes::new(py, &out)))
}

/// Fast estimate of the token count in a tokenizer family (see `is_exact_family`).
#[pyfunction]
#[pyo3(signature = (text, family = "o200k_base"))]
fn estimate_tokens(text: &Bound<'_, PyString>, family: &str) -> PyResult<f32> {
    let f = self::family(family)?;
    Ok(tokens::estimate(self::text(text, || "text".into())?, f))
}

#[pyfunction]
#[pyo3(signature = (texts, family = "o200k_base"))]
fn estimate_tokens_batch(
    py: Python<'_>,
    texts: Vec<Bound<'_, PyString>>,
    family: &str,
) -> PyResult<Vec<f32>> {
    let f = self::family(family)?;
    let owned = texts
        .iter()
        .enumerate()
        .map(|(i, t)| text(t, || format!("texts[{i}]")).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(py.detach(|| owned.iter().map(|s| tokens::estimate(s, f)).collect()))
}

/// Estimator inputs (character-class counts) for calibration scripts.
#[pyfunction]
fn estimator_inputs(text: &Bound<'_, PyString>) -> PyResult<Vec<f32>> {
    Ok(tokens::char_counts(self::text(text, || "text".into())?)
        .counts
        .to_vec())
}

/// Tokens of a chat request: its texts (contents, tool calls, names) exactly, plus OpenAI's
/// per-message overhead, plus images at the typical figure (not exact).
#[pyfunction]
#[pyo3(signature = (messages, encoding = "o200k_base"))]
fn count_message_tokens(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    encoding: &str,
) -> PyResult<usize> {
    let f = family(encoding)?;
    let (msgs, images, _) = messages_from(messages)?;
    // images at the typical figure the router plans with: they are billed, and leaving them
    // out had counted a prompt of 8 images as its 10 text tokens
    let image_tokens = images * crate::dispatch::IMAGE_TOKENS.1 as usize;
    Ok(py.detach(|| {
        msgs.iter()
            .map(|m| tokens::count(&m.content, f) + tokens::PER_MESSAGE_OVERHEAD)
            .sum::<usize>()
            + tokens::PER_REQUEST_OVERHEAD
            + image_tokens
    }))
}

/// Estimated prompt tokens of chat messages (text parts estimated, images at the typical
/// figure the router plans with, per-message overhead): what accounting falls back on
/// when an exact count is not cheap now (`tokenizers_ready`).
#[pyfunction]
#[pyo3(signature = (messages, encoding = "o200k_base"))]
fn estimate_message_tokens(messages: &Bound<'_, PyAny>, encoding: &str) -> PyResult<f64> {
    let f = family(encoding)?;
    let (msgs, images, _) = messages_from(messages)?;
    let text: f64 = msgs
        .iter()
        .map(|m| f64::from(tokens::estimate(&m.content, f)) + tokens::PER_MESSAGE_OVERHEAD as f64)
        .sum();
    Ok(
        text + tokens::PER_REQUEST_OVERHEAD as f64
            + images as f64 * crate::dispatch::IMAGE_TOKENS.1,
    )
}

#[pyfunction]
fn is_exact_family(family: &str) -> PyResult<bool> {
    Ok(self::family(family)?.is_exact())
}

/// The keys' spellings `_redact` must not let through (`spellings.rs`): whether a text
/// holds any (an answer's bytes, a str), and how much of a streamed text's end could start
/// one.
#[pyclass(frozen, module = "satisfice._core")]
struct Spellings(crate::spellings::Spellings);

/// A str's UTF-8, or its `surrogatepass` bytes when it holds an unpaired surrogate (which
/// no spelling's valid UTF-8 matches; `spellings.rs`). Encoded by `str.encode` itself, not
/// the text's own `encode`: a str subclass that overrides it (returning other bytes, or
/// raising) had had its key let through by `scrub`, or made it raise. The bytes copied
/// whole (`extract::<Vec<u8>>` had read them one int at a time).
fn str_bytes<'a>(s: &'a Bound<'_, PyString>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    match s.to_str() {
        Ok(t) => Ok(std::borrow::Cow::Borrowed(t.as_bytes())),
        Err(_) => {
            let py = s.py();
            let b = py.get_type::<PyString>().call_method1(
                intern!(py, "encode"),
                (s, intern!(py, "utf-8"), intern!(py, "surrogatepass")),
            )?;
            let b = b.downcast::<pyo3::types::PyBytes>()?;
            Ok(std::borrow::Cow::Owned(b.as_bytes().to_vec()))
        }
    }
}

/// The bytes of a bytes, bytearray or str (`str_bytes`) that a scan reads.
fn text_bytes<'a>(text: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    if let Ok(b) = text.downcast::<pyo3::types::PyBytes>() {
        return Ok(std::borrow::Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(b) = text.downcast::<pyo3::types::PyByteArray>() {
        return Ok(std::borrow::Cow::Owned(b.to_vec()));
    }
    str_bytes(text.downcast::<PyString>()?)
}

/// Whether `text` (bytes, bytearray or str) holds `n` ASCII digits in a row (`scan.rs`).
#[pyfunction]
fn has_digit_run(text: &Bound<'_, PyAny>, n: usize) -> PyResult<bool> {
    if n == 0 {
        return Err(
            CoreError::Input("has_digit_run: a run of no digits is in every text".into()).into(),
        );
    }
    Ok(crate::scan::has_digit_run(&text_bytes(text)?, n))
}

#[pymethods]
impl Spellings {
    #[new]
    fn new(folded: Vec<String>, exact: Vec<String>) -> PyResult<Self> {
        Ok(Self(crate::spellings::Spellings::new(folded, exact)?))
    }
    /// Whether a spelling occurs in `text` (bytes, bytearray or str), ASCII letters in any
    /// case.
    fn found_in(&self, text: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.0.found_in(&text_bytes(text)?))
    }
    /// How many characters at the end of `text` could be where a spelling begins.
    fn key_start(&self, text: &Bound<'_, PyString>) -> PyResult<usize> {
        Ok(self.0.key_start(&str_bytes(text)?))
    }
}

#[pyclass(frozen, module = "satisfice._core")]
struct Featurizer {
    cfg: FeaturizerConfig,
}

fn make_config(hash_buckets: usize, seed: u64) -> Result<FeaturizerConfig, CoreError> {
    if hash_buckets > 1 << 20 {
        return Err(CoreError::Config(format!(
            "hash_buckets {hash_buckets} is above 1048576"
        )));
    }
    Ok(FeaturizerConfig { hash_buckets, seed })
}

fn info_dict<'py>(py: Python<'py>, info: &features::PromptInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("task", info.task.name())?;
    d.set_item("flags", flag_names(info.flags))?;
    d.set_item("chars", info.chars)?;
    d.set_item("turns", info.turns)?;
    d.set_item("system_chars", info.system_chars)?;
    d.set_item("est_tokens", info.est_tokens(Family::O200k))?;
    Ok(d)
}

#[pymethods]
impl Featurizer {
    #[new]
    #[pyo3(signature = (hash_buckets = features::DEFAULT_BUCKETS, seed = features::DEFAULT_SEED))]
    fn new(hash_buckets: usize, seed: u64) -> PyResult<Self> {
        Ok(Self {
            cfg: make_config(hash_buckets, seed)?,
        })
    }
    #[getter]
    fn dim(&self) -> usize {
        self.cfg.dim()
    }
    #[getter]
    fn hash_buckets(&self) -> usize {
        self.cfg.hash_buckets
    }
    #[getter]
    fn seed(&self) -> u64 {
        self.cfg.seed
    }
    #[staticmethod]
    fn dense_names() -> Vec<&'static str> {
        features::DENSE_NAMES.to_vec()
    }
    /// One conversation → (feature vector, info dict).
    fn featurize<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray1<f32>>, Bound<'py, PyDict>)> {
        let (msgs, _, _) = messages_from(messages)?;
        let cfg = self.cfg;
        let (v, info) = if total_bytes(&msgs) > DETACH_BYTES {
            py.detach(|| features::featurize(&msgs, &cfg))
        } else {
            features::featurize(&msgs, &cfg)
        };
        Ok((v.into_pyarray(py), info_dict(py, &info)?))
    }
    /// Many prompts (str or message lists) → (n, dim) float32 array, one boundary crossing.
    fn featurize_batch<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let all = prompts_from(prompts)?;
        let cfg = self.cfg;
        let n = all.len();
        let dim = cfg.dim();
        // (n, dim) floats, asked of the allocator first: a size it cannot give is a
        // MemoryError, not an abort of the process (200,000 prompts at 2^20 buckets)
        let mut flat: Vec<f32> = Vec::new();
        n.checked_mul(dim)
            .and_then(|size| flat.try_reserve_exact(size).ok().map(|_| size))
            .map(|size| flat.resize(size, 0.0))
            .ok_or_else(|| {
                pyo3::exceptions::PyMemoryError::new_err(format!(
                    "{n} prompts x {dim} features do not fit in memory: featurize fewer at \
                     a time, or with fewer hash buckets"
                ))
            })?;
        let flat = py.detach(|| {
            for (m, row) in all.iter().zip(flat.chunks_mut(dim.max(1))) {
                features::featurize_into(m, &cfg, row);
            }
            flat
        });
        Ok(numpy::ndarray::Array2::from_shape_vec((n, dim), flat)
            .map_err(|e| CoreError::Config(e.to_string()))?
            .into_pyarray(py))
    }
}

#[pyclass(frozen, module = "satisfice._core", name = "DispatchTable")]
struct PyDispatchTable {
    table: DispatchTable,
}

/// One registry model, by name (`ModelRowSpec` in the stub).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct RowSpec {
    id: String,
    /// USD per 1M tokens; NaN = unpriced.
    price_in: f64,
    price_out: f64,
    context_window: u32,
    max_output: u32,
    capabilities: Vec<String>,
    /// NaN = unknown.
    p95_ms: f64,
    tokenizer: String,
    bias: f32,
    ability: Vec<f32>,
    /// The model's embedding logistic (64 weights and an intercept), if it has one.
    #[pyo3(default)]
    emb: Option<Vec<f32>>,
    disabled: bool,
    /// Long-context tier: prompt tokens above which it applies (inf: none) and its prices.
    long_above: f64,
    long_in: f64,
    long_out: f64,
    /// USD per call on top of tokens.
    fee: f64,
    /// Thinking tokens the wire adds to max_tokens (taken off the window and max output).
    #[pyo3(default)]
    thinking: u32,
    /// The thinking is a budget max_tokens must exceed (extended thinking), not room.
    #[pyo3(default)]
    thinking_fixed: bool,
    /// USD per thinking token, the cheapest deployment's (a lowered budget's fee).
    #[pyo3(default)]
    thinking_rate: f64,
}

/// One rule, by name (`RuleSpec` in the stub); `models` are row indices in preference order.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct RuleSpec {
    name: String,
    task: Option<String>,
    flags: Vec<String>,
    min_tokens_in: f32,
    max_tokens_in: f32,
    models: Vec<usize>,
}

fn caps_of(names: &[String], what: &str) -> Result<u32, CoreError> {
    names.iter().try_fold(0u32, |acc, n| {
        cap::parse(n).map(|b| acc | b).ok_or_else(|| {
            CoreError::Config(format!(
                "{what}: unknown capability {}; known: {}",
                quoted(n),
                cap::NAMES.join(", ")
            ))
        })
    })
}

impl PyDispatchTable {
    #[allow(clippy::too_many_arguments)]
    fn constraints(
        &self,
        max_cost: Option<f64>,
        latency_slo_ms: Option<f64>,
        needs: Option<Vec<String>>,
        max_output_tokens: Option<u32>,
        exclude: Option<Vec<usize>>,
        live_p95_ms: Option<Vec<(usize, f64)>>,
    ) -> Result<Constraints, CoreError> {
        let mut ex = vec![false; self.table.rows.len()];
        for i in exclude.unwrap_or_default() {
            if let Some(e) = ex.get_mut(i) {
                *e = true;
            }
        }
        let mut live = Vec::new();
        if let Some(pairs) = live_p95_ms.filter(|p| !p.is_empty()) {
            live = vec![f64::NAN; self.table.rows.len()];
            for (i, ms) in pairs {
                if let Some(slot) = live.get_mut(i) {
                    *slot = ms;
                }
            }
        }
        Ok(Constraints {
            max_cost: max_cost.unwrap_or(f64::NAN),
            latency_slo_ms: latency_slo_ms.unwrap_or(f64::NAN),
            required_caps: caps_of(needs.as_deref().unwrap_or(&[]), "needs")?,
            max_output_tokens,
            exclude: ex,
            live_p95_ms: live,
            ..Constraints::default()
        })
    }
}

#[pymethods]
impl PyDispatchTable {
    /// rows: one `ModelRowSpec` mapping per model; rules: `RuleSpec` mappings;
    /// predictor: feature-major weights (dim*(k+1)).
    #[new]
    #[pyo3(signature = (rows, weights, intercept, k, rules, expected_out, hash_buckets = features::DEFAULT_BUCKETS, seed = features::DEFAULT_SEED))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rows: Vec<RowSpec>,
        weights: PyBuffer<f32>,
        intercept: Vec<f32>,
        k: usize,
        rules: Vec<RuleSpec>,
        expected_out: [u32; 8],
        hash_buckets: usize,
        seed: u64,
    ) -> PyResult<Self> {
        start_preload();
        let cfg = make_config(hash_buckets, seed)?;
        if k > MAX_LATENT {
            // checked before anything is sized by it (k = 2^40 had aborted the process)
            return Err(CoreError::Config(format!(
                "the predictor's k is {k}; at most {MAX_LATENT} latent dimensions"
            ))
            .into());
        }
        let mut model_rows = Vec::with_capacity(rows.len());
        let mut params = Vec::with_capacity(rows.len() * (k + 1));
        let mut emb = EmbWeights {
            w: Vec::with_capacity(rows.len() * EmbWeights::STRIDE),
            has: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            match &r.emb {
                Some(v) if v.len() == EmbWeights::STRIDE => emb.w.extend_from_slice(v),
                Some(v) => {
                    return Err(CoreError::Config(format!(
                        "model {:?} has {} embedding weights, need {}",
                        r.id,
                        v.len(),
                        EmbWeights::STRIDE
                    ))
                    .into())
                }
                None => emb.w.extend([0.0; EmbWeights::STRIDE]),
            }
            emb.has.push(r.emb.is_some());
            if r.ability.len() != k {
                return Err(CoreError::Config(format!(
                    "model {:?} has {} ability values, the predictor needs {k}",
                    r.id,
                    r.ability.len()
                ))
                .into());
            }
            params.push(r.bias);
            params.extend_from_slice(&r.ability);
            // what Price and ModelSpec check in Python, checked here too: a negative rate
            // had made a negative cost, a NaN fee a NaN cost that passed any cap
            let rate = |v: f64| v.is_nan() || (v.is_finite() && v >= 0.0);
            let ok = rate(r.price_in)
                && rate(r.price_out)
                && rate(r.long_in)
                && rate(r.long_out)
                && r.fee.is_finite()
                && r.fee >= 0.0
                && r.thinking_rate.is_finite()
                && r.thinking_rate >= 0.0
                && !r.long_above.is_nan();
            if !ok {
                return Err(CoreError::Config(format!(
                    "model {:?}: a price, fee or tier threshold that is negative, infinite or \
                     NaN (NaN rates alone mean unpriced)",
                    r.id
                ))
                .into());
            }
            let id = r.id;
            let caps = caps_of(&r.capabilities, &format!("model {id:?}"))?;
            let family = family(&r.tokenizer)
                .map_err(|e| CoreError::Config(format!("model {id:?}: {e}")))?;
            model_rows.push(ModelRow {
                id,
                price_in: r.price_in,
                price_out: r.price_out,
                context_window: r.context_window,
                max_output: r.max_output,
                caps,
                p95_ms: r.p95_ms,
                family,
                disabled: r.disabled,
                long_above: r.long_above,
                long_in: r.long_in,
                long_out: r.long_out,
                fee: r.fee,
                thinking: r.thinking,
                thinking_fixed: r.thinking_fixed,
                thinking_rate: r.thinking_rate,
            });
        }
        let mut compiled = Vec::with_capacity(rules.len());
        for RuleSpec {
            name,
            task,
            flags,
            min_tokens_in: lo,
            max_tokens_in: hi,
            models,
        } in rules
        {
            let task = match task {
                Some(t) => Some(Task::parse(&t).ok_or_else(|| {
                    CoreError::Config(format!(
                        "rule {name:?}: unknown task {t:?}; known: {}",
                        Task::NAMES.join(", ")
                    ))
                })?),
                None => None,
            };
            let mut flags_all = 0;
            for f in &flags {
                let bit = flag::NAMES.iter().position(|n| n == f).ok_or_else(|| {
                    CoreError::Config(format!(
                        "rule {name:?}: unknown flag {f:?}; known: {}",
                        flag::NAMES.join(", ")
                    ))
                })?;
                flags_all |= 1 << bit;
            }
            compiled.push(Rule {
                name,
                task,
                flags_all,
                min_tokens_in: lo,
                max_tokens_in: hi,
                models,
            });
        }
        // any float32 buffer: the predictor's array('f'), or a numpy array
        let predictor = Predictor::new(cfg.dim(), k, weights.to_vec(py)?, intercept)?;
        if emb.has.iter().any(|&h| h) {
            start_table_preload();
        }
        Ok(Self {
            table: DispatchTable::new(
                model_rows,
                params,
                predictor,
                Some(emb),
                compiled,
                cfg,
                expected_out,
            )?,
        })
    }

    /// A copy with one model's bias and ability replaced (feedback), the rest reused.
    fn with_model(&self, row: usize, bias: f32, ability: Vec<f32>) -> PyResult<Self> {
        Ok(Self {
            table: self.table.with_model(row, bias, ability)?,
        })
    }

    /// Plan many prompts at once (no floor, no λ), GIL released: `(p_good, est_cost,
    /// rule_pick)`, (n, models) float64 arrays and an (n,) int64 array; see `rank`.
    #[pyo3(signature = (prompts, *, max_cost = None, latency_slo_ms = None, needs = None, max_output_tokens = None, exclude = None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn plan_batch<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
        max_cost: Option<f64>,
        latency_slo_ms: Option<f64>,
        needs: Option<Vec<String>>,
        max_output_tokens: Option<u32>,
        exclude: Option<Vec<usize>>,
    ) -> PyResult<(
        Bound<'py, PyArray2<f64>>,
        Bound<'py, PyArray2<f64>>,
        Bound<'py, PyArray1<i64>>,
    )> {
        let c = self.constraints(
            max_cost,
            latency_slo_ms,
            needs,
            max_output_tokens,
            exclude,
            None,
        )?;
        let all = prompts_from(prompts)?;
        let (n, m) = (all.len(), self.table.rows.len());
        let table = &self.table;
        let (p, cost, forced) = py.detach(|| table.plan_matrix(&all, &c));
        let shape = |v: Vec<f64>| {
            numpy::ndarray::Array2::from_shape_vec((n, m), v)
                .map_err(|e| CoreError::Config(e.to_string()))
        };
        Ok((
            shape(p)?.into_pyarray(py),
            shape(cost)?.into_pyarray(py),
            forced.into_pyarray(py),
        ))
    }

    #[getter]
    fn model_ids(&self) -> Vec<String> {
        self.table.rows.iter().map(|r| r.id.clone()).collect()
    }

    /// Featurise, estimate, filter and rank in one call. Its arguments may be given in
    /// order (the router does: matching 13 keywords by name had been about 2,200
    /// instructions a route) or by name. `live_p95_ms`: (row, measured p95)
    /// pairs that replace the registry's p95 under a latency SLO.
    /// `extra_text`: what the request sends besides its messages (tool definitions, a
    /// response schema), counted as prompt tokens and not featurised. `count_prompt`: count
    /// the prompt for every candidate, not only near a limit. `output_includes_thinking`:
    /// `max_output_tokens` holds a row's thinking as well as its answer. `thinking_cap`: a
    /// fixed thinking budget over it is sent as it (`Constraints::thinking_cap`).
    #[pyo3(signature = (messages, max_cost = None, latency_slo_ms = None, quality_floor = 0.0, needs = None, max_output_tokens = None, lam = None, exclude = None, live_p95_ms = None, extra_text = None, count_prompt = false, output_includes_thinking = false, thinking_cap = None))]
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_cost: Option<f64>,
        latency_slo_ms: Option<f64>,
        quality_floor: f32,
        needs: Option<Vec<String>>,
        max_output_tokens: Option<u32>,
        lam: Option<f64>,
        exclude: Option<Vec<usize>>,
        live_p95_ms: Option<Vec<(usize, f64)>>,
        extra_text: Option<Bound<'_, PyString>>,
        count_prompt: bool,
        output_includes_thinking: bool,
        thinking_cap: Option<u32>,
    ) -> PyResult<PyPlan> {
        let (msgs, images, uncounted) = messages_from(messages)?;
        let mut c = self.constraints(
            max_cost,
            latency_slo_ms,
            needs,
            max_output_tokens,
            exclude,
            live_p95_ms,
        )?;
        c.quality_floor = quality_floor;
        c.lambda = lam;
        if let Some(t) = &extra_text {
            c.extra_text = text(t, || "the tools or response_format".into())?.to_owned();
        }
        if images > 0 {
            c.required_caps |= cap::parse("vision").unwrap_or(0);
            c.images = images as u32;
        }
        c.uncounted = uncounted;
        c.count_prompt = count_prompt;
        c.output_includes_thinking = output_includes_thinking;
        c.thinking_cap = thinking_cap;
        let table = &self.table;
        let plan = if detach_for(total_bytes(&msgs) + c.extra_text.len()) {
            py.detach(|| table.plan(&msgs, &c))
        } else {
            table.plan(&msgs, &c)
        };
        Ok(PyPlan { plan })
    }
}

/// The result of `DispatchTable.plan`, read lazily by `satisfice.Decision`.
#[pyclass(frozen, module = "satisfice._core", name = "Plan")]
struct PyPlan {
    plan: Plan,
}

#[pymethods]
impl PyPlan {
    /// [(row, p_good, est_cost_usd or nan, tokens_in, tokens_in_exact, by_rule)], ranked.
    #[getter]
    fn candidates(&self) -> Vec<(usize, f32, f64, u32, bool, bool)> {
        self.top(usize::MAX)
    }
    /// The first `n` candidates, as `candidates` gives them: a record's or a reason's read,
    /// which with thousands of models must not convert them all.
    fn top(&self, n: usize) -> Vec<(usize, f32, f64, u32, bool, bool)> {
        self.plan
            .first(n)
            .iter()
            .map(|c| {
                (
                    c.row,
                    c.p_good,
                    c.est_cost,
                    c.tokens_in,
                    c.tokens_in_exact,
                    c.by_rule,
                )
            })
            .collect()
    }
    /// (constraint, how many models it filtered out), without formatting every reason.
    fn filtered_counts(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        if !self.plan.disabled.is_empty() {
            out.push((Filtered::Disabled.constraint(), self.plan.disabled.len()));
        }
        for (_, f) in &self.plan.filtered {
            match out.iter_mut().find(|(k, _)| *k == f.constraint()) {
                Some((_, n)) => *n += 1,
                None => out.push((f.constraint(), 1)),
            }
        }
        out.sort_unstable();
        out
    }
    /// Row indices of the first `n` candidates (primary, then fallbacks): the hot path's read.
    fn head(&self, n: usize) -> Vec<usize> {
        self.plan.first(n).iter().map(|c| c.row).collect()
    }
    fn __len__(&self) -> usize {
        self.plan.candidates.len()
    }
    /// [(row, constraint, reason)]
    #[getter]
    fn filtered(&self) -> Vec<(usize, &'static str, String)> {
        // Those below the quality floor come last (the ranking drops them after the other
        // filters); they are listed best first, as a reader looks for the nearest miss.
        let filtered = self.plan.all_filtered();
        let mut all: Vec<&(usize, Filtered)> = filtered.iter().collect();
        let below = |f: &Filtered| match f {
            Filtered::BelowFloor { p, .. } => Some(*p),
            _ => None,
        };
        let start = all
            .iter()
            .position(|(_, f)| below(f).is_some())
            .unwrap_or(all.len());
        all[start..].sort_by(|a, b| {
            let (pa, pb) = (below(&a.1).unwrap_or(0.0), below(&b.1).unwrap_or(0.0));
            pb.total_cmp(&pa).then(a.0.cmp(&b.0))
        });
        all.iter()
            .map(|(i, f)| (*i, f.constraint(), f.describe()))
            .collect()
    }
    /// File and audio parts of the prompt, which its token counts leave out.
    #[getter]
    fn uncounted_parts(&self) -> u32 {
        self.plan.uncounted
    }
    /// The predictor's latent `[e_0..e_{k-1}, difficulty]` for this prompt.
    #[getter]
    fn latent(&self) -> Vec<f32> {
        self.plan.latent.clone()
    }
    /// The prompt's int8 embedding as bytes, when some model reads it (else None).
    #[getter]
    fn embedding<'py>(&self, py: Python<'py>) -> Option<Bound<'py, pyo3::types::PyBytes>> {
        self.plan
            .embedding
            .map(|e| pyo3::types::PyBytes::new(py, &e.map(|v| v as u8)))
    }
    #[getter]
    fn rule(&self) -> Option<usize> {
        self.plan.rule
    }
    #[getter]
    fn below_floor(&self) -> bool {
        self.plan.below_floor
    }
    #[getter]
    fn tokens_out(&self) -> u32 {
        self.plan.tokens_out
    }
    #[getter]
    fn task(&self) -> &'static str {
        self.plan.info.task.name()
    }
    #[getter]
    fn flags(&self) -> Vec<&'static str> {
        flag_names(self.plan.info.flags)
    }
    #[getter]
    fn chars(&self) -> usize {
        self.plan.info.chars
    }
    /// Estimated prompt tokens in a family (for the cost of the same request elsewhere).
    fn est_tokens(&self, family: &str) -> PyResult<f32> {
        Ok(self.plan.info.est_tokens(self::family(family)?))
    }
    /// At most this many prompt tokens for a candidate's table row: its count when one
    /// was made, else the upper bound a limit decided on the estimate relied on. None: the
    /// row is not a candidate.
    fn max_tokens_in(&self, row: usize) -> Option<u32> {
        self.plan
            .candidates
            .iter()
            .find(|c| c.row == row)
            .map(|c| c.tokens_in_max)
    }
}

#[pymodule]
mod _core {
    #[pymodule_export]
    use super::{
        count_message_tokens, count_tokens, count_tokens_batch, count_tokens_till_limit, embed,
        embed_batch, estimate_message_tokens, estimate_tokens, estimate_tokens_batch,
        estimator_inputs, has_digit_run, is_exact_family, rank, tokenizers_ready, update_belief,
        wait_for_tokenizers, Featurizer, PyDispatchTable, PyPlan, Spellings,
    };

    #[pymodule_export]
    const FEATURE_VERSION: u32 = crate::features::FEATURE_VERSION;

    /// Named dense features ahead of the hashed n-gram block.
    #[pymodule_export]
    const DENSE: usize = crate::features::DENSE;

    /// Dimensions of `embed`.
    #[pymodule_export]
    const EMBED_DIM: usize = crate::embed::DIM;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::{PyAnyMethods, PyDictMethods, PyModuleMethods};
        m.add("CAPABILITIES", crate::dispatch::cap::NAMES.to_vec())?;
        m.add("TASKS", crate::features::Task::NAMES.to_vec())?;
        m.add("FLAGS", crate::features::flag::NAMES.to_vec())?;
        m.add(
            "FAMILIES",
            crate::tokens::Family::ALL
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>(),
        )?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // A fork waits for a tokenizer build in progress (see `wait_for_tokenizers`).
        let kwargs = pyo3::types::PyDict::new(m.py());
        kwargs.set_item("before", m.getattr("wait_for_tokenizers")?)?;
        m.py()
            .import("os")?
            .call_method("register_at_fork", (), Some(&kwargs))?;
        Ok(())
    }
}
