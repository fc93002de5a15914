//! `nsac fmt`: print a spec in canonical form, keeping its comments; `--write` rewrites it
//! atomically, `--check` only reports.

use std::io::{IsTerminal, Write};

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

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so an
/// interrupted write never leaves half a spec behind.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    let err = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
