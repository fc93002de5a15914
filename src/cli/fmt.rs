//! `nsac fmt`: print a spec in canonical form, keeping its comments; `--write` rewrites it
//! atomically (by the file policy: a symlinked spec's target is rewritten, its mode kept),
//! `--check` only reports.

use std::io::IsTerminal;

use nsac_dsl::{LoadError, SourceFile, SourceKind};

use super::args::FmtArgs;
use super::error::CliError;
use super::output::emit;

pub fn run(args: &FmtArgs) -> Result<(), CliError> {
    let file = SourceFile::read(&args.spec)?;
    if file.kind != SourceKind::Text {
        return Err(CliError::Other(format!(
            "{}: `nsac fmt` formats the text form (.nsa); YAML files are left as written",
            file.name
        )));
    }
    let formatted = match nsac_dsl::format::format_source(&file.text) {
        Ok(text) => text,
        Err(error) => return Err(LoadError::Invalid { file, error }.into()),
    };
    if args.check {
        if formatted != file.text {
            return Err(CliError::Reported(format!(
                "{} is not formatted (run `nsac fmt --write {}`)",
                file.name, file.name
            )));
        }
        return Ok(());
    }
    if args.write {
        if formatted != file.text {
            write_atomically(&args.spec, &formatted)?;
        }
        if std::io::stderr().is_terminal() {
            eprintln!("formatted {}", file.name);
        }
        return Ok(());
    }
    emit(&formatted).map_err(CliError::Stdout)?;
    Ok(())
}

/// Writes `text` to `path` by the file policy (`nsac_runtime::fs_policy`): a temporary file
/// beside the target renamed over it, so an interrupted write never leaves half a file; a
/// symlink's target is replaced, the original mode kept, a non-regular file never replaced.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    Ok(nsac_runtime::fs_policy::write_atomic(
        path,
        text.as_bytes(),
    )?)
}
