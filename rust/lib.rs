//! satisfice core: feature extraction, token counting/estimation and the dispatch table.
//! Pure Rust with no I/O, clocks or threads; `py.rs` (feature `python`) is the only binding.

#![forbid(unsafe_code)]

pub mod dispatch;
pub mod embed;
pub mod features;
pub mod scan;
pub mod spellings;
pub mod tokens;

#[cfg(feature = "python")]
mod py;

/// Every error the core returns; `py.rs` maps each variant to one class in `errors.py`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Tokenizer(String),
}
