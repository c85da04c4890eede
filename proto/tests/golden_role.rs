//! The role document's wire format is the contract between server and agent versions: a document the server
//! wrote before the types changed must read the same and be written back byte for byte.

use lbfleet_proto::RoleDocument;

const GOLDEN: &str = include_str!("golden/role_document.json");

#[test]
fn the_role_document_reads_and_writes_its_golden_json_unchanged() {
    let golden = GOLDEN.trim_end();
    let doc: RoleDocument = match serde_json::from_str(golden) {
        Ok(d) => d,
        Err(e) => panic!("golden role document does not parse: {e}"),
    };
    let written = serde_json::to_string(&doc).unwrap_or_default();
    assert_eq!(written, golden);
}
