//! keepalived.conf import and export: `parser` reads the files as keepalived 2.2 does (sans-IO, files through
//! a `Source`), `mapping` turns what was read into a plan of clusters for the fleet and a list of what it
//! could not carry over, each with its file and line; `export` writes the keepalived.conf of one node's role.

pub mod export;
pub mod import;
pub mod lexer;
pub mod mapping;
pub mod parser;
pub mod source;

#[cfg(test)]
mod tests;

pub use export::{export, export_member, Export, ExportError, NodePart};
pub use import::{apply, import, read_machines, ImportError, ImportReport};
pub use mapping::{plan, ImportPlan, Machine, NotImported, PlannedCluster, PlannedMember};
pub use parser::{parse, Config, Diagnostic, Limits, Loc, ParseError, Statement};
pub use source::{FsSource, MemorySource, Source, SourceError};
