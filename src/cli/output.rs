//! Writing to standard output without panicking when the reader goes away (`nsac … | head`).

use std::io::Write;

/// Writes `text` to standard output. A closed pipe ends the process quietly with success, as
/// command-line tools do; any other write error is returned.
pub fn emit(text: &str) -> Result<(), std::io::Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other,
    }
}

/// [`emit`] followed by a newline unless `text` already ends with one.
pub fn emit_line(text: &str) -> Result<(), std::io::Error> {
    if text.ends_with('\n') {
        emit(text)
    } else {
        emit(&format!("{text}\n"))
    }
}

/// Pretty JSON of `value`, emitted as one line-terminated document.
pub fn emit_json<T: serde::Serialize>(value: &T) -> Result<(), std::io::Error> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    emit_line(&text)
}
