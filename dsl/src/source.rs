//! Loading a spec file: read it, pick the form by extension, parse and validate.
//!
//! [`SourceFile`] keeps the name and text so that a [`SpecError`] can be rendered against them
//! (`LoadError::render`), which is what the CLI prints. Files are read under the file policy
//! ([`crate::fs_policy`]: regular files only, at most [`SPEC_MAX_BYTES`]); a file that is not
//! UTF-8 is a diagnostic at the line and column of its first bad byte.

use std::path::{Path, PathBuf};

use crate::error::{Diagnostic, DiagnosticKind, SpecError};
use crate::fs_policy::{self, FsError, SPEC_MAX_BYTES};
use crate::spec::Spec;

/// Which form a file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `.nsa`
    Text,
    /// `.yaml` / `.yml`
    Yaml,
}

impl SourceKind {
    /// The form for a path's extension, if it is one of ours.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "nsa" => Some(SourceKind::Text),
            "yaml" | "yml" => Some(SourceKind::Yaml),
            _ => None,
        }
    }
}

/// A spec source held in memory: where it came from, its text and form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    pub kind: SourceKind,
}

impl SourceFile {
    /// Reads a file; the form comes from its extension.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let kind = SourceKind::from_path(path).ok_or_else(|| LoadError::UnknownExtension {
            path: path.to_path_buf(),
        })?;
        let bytes =
            fs_policy::read_bounded(path, SPEC_MAX_BYTES, "a spec file").map_err(|error| {
                LoadError::Io {
                    path: path.to_path_buf(),
                    error,
                }
            })?;
        let name = path.display().to_string();
        match String::from_utf8(bytes) {
            Ok(text) => Ok(SourceFile { name, text, kind }),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let byte = e.as_bytes()[at];
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                // The lossy text agrees with the file up to the first bad byte, which it shows
                // as U+FFFD (3 bytes): the caret points at that byte.
                let diagnostic = Diagnostic::new(
                    DiagnosticKind::NotUtf8 {
                        byte: format!("0x{byte:02X}"),
                    },
                    at..at + char::REPLACEMENT_CHARACTER.len_utf8(),
                )
                .help("specs are UTF-8 text; re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)");
                Err(LoadError::Invalid {
                    file: SourceFile { name, text, kind },
                    error: SpecError::single(diagnostic),
                })
            }
        }
    }

    /// Parses and validates the text in its form.
    pub fn parse(&self) -> Result<Spec, SpecError> {
        match self.kind {
            SourceKind::Text => crate::parse_text(&self.text),
            SourceKind::Yaml => crate::parse_yaml(&self.text),
        }
    }
}

/// Why a spec file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read spec: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: FsError,
    },
    #[error("{}: unknown spec file extension (expected .nsa, .yaml or .yml)", path.display())]
    UnknownExtension { path: PathBuf },
    #[error("{}: {error}", file.name)]
    Invalid { file: SourceFile, error: SpecError },
}

impl LoadError {
    /// The full report: annotated snippets for an invalid spec, the message otherwise.
    pub fn render(&self, color: bool) -> String {
        match self {
            LoadError::Invalid { file, error } => {
                crate::diagnostics::render(error, &file.name, &file.text, color)
            }
            other => format!("error: {other}\n"),
        }
    }
}

/// Reads, parses and validates a spec file (`.nsa`, `.yaml` or `.yml`).
pub fn load(path: &Path) -> Result<Spec, LoadError> {
    let file = SourceFile::read(path)?;
    file.parse()
        .map_err(|error| LoadError::Invalid { file, error })
}
