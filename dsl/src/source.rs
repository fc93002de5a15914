//! Loading a spec file: read it, pick the form by extension, parse and validate.
//!
//! [`SourceFile`] keeps the name and text so that a [`SpecError`] can be rendered against them
//! (`LoadError::render`), which is what the CLI prints.

use std::path::{Path, PathBuf};

use crate::error::SpecError;
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
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SourceFile {
            name: path.display().to_string(),
            text,
            kind,
        })
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
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
