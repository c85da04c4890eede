//! Text for people: times, ages, and field-by-field diffs of JSON documents (audit rows).

use std::collections::BTreeMap;

pub use crate::clock::time_text;
use crate::store;

/// How long ago, in words (`12 s ago`, `3 min ago`), or `never`.
pub fn ago_text(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let secs = (store::now_ms().saturating_sub(ms) / 1000).max(0);
    match secs {
        0..=89 => format!("{secs} s ago"),
        90..=5399 => format!("{} min ago", secs / 60),
        5400..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Flattens JSON into `path -> scalar text` for before/after diffs (`spec.vips[0]`, `weight`).
pub fn flatten_json(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            serde_json::Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// One changed field between two JSON documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Fields added, removed or changed from `before` to `after`.
pub fn json_diff(before: &serde_json::Value, after: &serde_json::Value) -> Vec<DiffLine> {
    let b = flatten_json(before);
    let a = flatten_json(after);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (b.get(k), a.get(k));
            (x != y).then(|| DiffLine {
                path: if k.is_empty() {
                    "(value)".into()
                } else {
                    k.clone()
                },
                before: x.cloned(),
                after: y.cloned(),
            })
        })
        .collect()
}

/// VIPs as text: `198.18.0.10/32`, `198.18.2.254/24 dev eth1`.
pub fn vip_list(vips: &[lbfleet_proto::VipSpec], sep: &str) -> String {
    vips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_added_and_removed_fields() {
        let d = json_diff(
            &json!({"state": "discovered", "hostname": null, "x": [1, 2]}),
            &json!({"state": "ready", "hostname": "lb-01", "x": [1]}),
        );
        assert_eq!(
            d,
            vec![
                DiffLine {
                    path: "hostname".into(),
                    before: None,
                    after: Some("lb-01".into())
                },
                DiffLine {
                    path: "state".into(),
                    before: Some("discovered".into()),
                    after: Some("ready".into())
                },
                DiffLine {
                    path: "x[1]".into(),
                    before: Some("2".into()),
                    after: None
                },
            ]
        );
        assert!(json_diff(&json!(null), &json!(null)).is_empty());
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00Z");
        assert_eq!(ago_text(None), "never");
    }
}
