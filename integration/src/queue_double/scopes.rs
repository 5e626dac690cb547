//! Scope expressions as api.json writes them (`AllOf`, `AnyOf`, `{for, in, each}`, `{if, then, else}`,
//! `<param>` substitution) and scope satisfaction (a trailing `*` matches any suffix), after
//! taskcluster-lib-scopes and `libraries/api/src/expressions.js`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A rendered scope expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// One scope.
    Scope(String),
    /// Every member must be satisfied.
    AllOf(Vec<Expr>),
    /// At least one member must be satisfied (none: unsatisfiable).
    AnyOf(Vec<Expr>),
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, name: &str, items: &[Expr]| {
            write!(f, "{{\"{name}\": [")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{item}")?;
            }
            write!(f, "]}}")
        };
        match self {
            Expr::Scope(s) => write!(f, "{}", Value::String(s.clone())),
            Expr::AllOf(items) => list(f, "AllOf", items),
            Expr::AnyOf(items) => list(f, "AnyOf", items),
        }
    }
}

/// A scope is printable ASCII.
pub fn valid_scope(scope: &str) -> bool {
    scope.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Does the held scope `have` grant `need`?
pub fn grants(have: &str, need: &str) -> bool {
    match have.strip_suffix('*') {
        Some(prefix) => need.starts_with(prefix),
        None => have == need,
    }
}

/// Do `scopes` satisfy `expr`?
pub fn satisfies(scopes: &[String], expr: &Expr) -> bool {
    match expr {
        Expr::Scope(need) => scopes.iter().any(|have| grants(have, need)),
        Expr::AllOf(items) => items.iter().all(|e| satisfies(scopes, e)),
        Expr::AnyOf(items) => items.iter().any(|e| satisfies(scopes, e)),
    }
}

/// The scopes of `expr` that `scopes` do not grant (for error messages).
pub fn missing(scopes: &[String], expr: &Expr) -> Vec<String> {
    match expr {
        Expr::Scope(need) if !scopes.iter().any(|have| grants(have, need)) => vec![need.clone()],
        Expr::Scope(_) => vec![],
        Expr::AllOf(items) | Expr::AnyOf(items) if !satisfies(scopes, expr) => {
            items.iter().flat_map(|e| missing(scopes, e)).collect()
        }
        _ => vec![],
    }
}

fn substitute(template: &str, params: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start + 1..].find('>') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        let is_param = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..start]);
        if is_param {
            match params.get(name) {
                Some(Value::String(s)) => out.push_str(s),
                Some(Value::Number(n)) => out.push_str(&n.to_string()),
                _ => {
                    return Err(format!(
                        "scope expression template expected parameter '{name}' to be a string or number"
                    ))
                }
            }
        } else {
            out.push('<');
            out.push_str(name);
            out.push('>');
        }
        rest = &rest[start + 1 + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Render a template with `params`; `None` when an `if` without `else` is false.
fn render_inner(template: &Value, params: &Map<String, Value>) -> Result<Option<Vec<Expr>>, String> {
    match template {
        Value::String(s) => Ok(Some(vec![Expr::Scope(substitute(s, params)?)])),
        Value::Object(o) if o.contains_key("AllOf") || o.contains_key("AnyOf") => {
            let all = o.contains_key("AllOf");
            let items = o
                .get(if all { "AllOf" } else { "AnyOf" })
                .and_then(Value::as_array)
                .ok_or("AllOf/AnyOf must be an array")?;
            let mut out = Vec::new();
            for item in items {
                if let Some(rendered) = render_inner(item, params)? {
                    out.extend(rendered);
                }
            }
            Ok(Some(vec![if all { Expr::AllOf(out) } else { Expr::AnyOf(out) }]))
        }
        Value::Object(o) if o.contains_key("for") => {
            let var = o["for"].as_str().ok_or("`for` must be a string")?;
            let list = o
                .get("in")
                .and_then(Value::as_str)
                .ok_or("`in` must be a string")?;
            let Some(Value::Array(values)) = params.get(list) else {
                return Err(format!(
                    "scope expression template expected parameter '{list}' to be a array"
                ));
            };
            let mut nested = params.clone();
            let mut out = Vec::new();
            for v in values {
                nested.insert(var.to_string(), v.clone());
                if let Some(rendered) = render_inner(&o["each"], &nested)? {
                    out.extend(rendered);
                }
            }
            Ok(Some(out))
        }
        Value::Object(o) if o.contains_key("if") => {
            let var = o["if"].as_str().ok_or("`if` must be a string")?;
            match params.get(var) {
                Some(Value::Bool(true)) => render_inner(&o["then"], params),
                Some(Value::Bool(false)) => match o.get("else") {
                    Some(e) => render_inner(e, params),
                    None => Ok(None),
                },
                _ => Err(format!(
                    "scope expression template expected parameter '{var}' to be a boolean"
                )),
            }
        }
        other => Err(format!("not a scope expression template: {other}")),
    }
}

/// Render a template (the `scopes` of an api.json entry) with `params`. `None` means "no scopes
/// needed" (a public request).
pub fn render(template: &Value, params: &Map<String, Value>) -> Result<Option<Expr>, String> {
    Ok(render_inner(template, params)?.and_then(|mut v| if v.len() == 1 { v.pop() } else { None }))
}

/// The parameters a template uses (not counting `for` variables).
pub fn template_params(template: &Value) -> BTreeSet<String> {
    fn walk(t: &Value, bound: &BTreeSet<String>, out: &mut BTreeSet<String>) {
        match t {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(start) = rest.find('<') {
                    let Some(len) = rest[start + 1..].find('>') else {
                        break;
                    };
                    let name = &rest[start + 1..start + 1 + len];
                    if !bound.contains(name) {
                        out.insert(name.to_string());
                    }
                    rest = &rest[start + 1 + len + 1..];
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, bound, out)),
            Value::Object(o) => {
                if let Some(var) = o.get("for").and_then(Value::as_str) {
                    if let Some(list) = o.get("in").and_then(Value::as_str) {
                        out.insert(list.to_string());
                    }
                    let mut inner = bound.clone();
                    inner.insert(var.to_string());
                    if let Some(each) = o.get("each") {
                        walk(each, &inner, out);
                    }
                    return;
                }
                if let Some(var) = o.get("if").and_then(Value::as_str) {
                    out.insert(var.to_string());
                }
                for (k, v) in o {
                    if k != "if" {
                        walk(v, bound, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(template, &BTreeSet::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn star_suffix_grants_prefixes_only() {
        assert!(grants("queue:claim-work:*", "queue:claim-work:p/w"));
        assert!(grants("*", "anything"));
        assert!(!grants("queue:claim-work", "queue:claim-work:p/w"));
        assert!(!grants("queue:claim-work:p/w*x", "queue:claim-work:p/wx"));
    }

    #[test]
    fn renders_claim_work_and_create_task_templates() {
        let t =
            json!({"AllOf": ["queue:claim-work:<taskQueueId>", "queue:worker-id:<workerGroup>/<workerId>"]});
        let e = render(
            &t,
            &params(json!({"taskQueueId": "p/w", "workerGroup": "g", "workerId": "i"})),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            Expr::AllOf(vec![
                Expr::Scope("queue:claim-work:p/w".into()),
                Expr::Scope("queue:worker-id:g/i".into())
            ])
        );
        let t = json!({"AllOf": [{"each": "<scope>", "for": "scope", "in": "scopes"},
            {"AnyOf": [{"each": "q:<priority>", "for": "priority", "in": "priorities"}]}]});
        let e = render(
            &t,
            &params(json!({"scopes": ["a", "b"], "priorities": ["high", "low"]})),
        )
        .unwrap()
        .unwrap();
        assert!(satisfies(&["a".into(), "b".into(), "q:low".into()], &e));
        assert!(!satisfies(&["a".into(), "q:low".into()], &e));
        assert_eq!(
            template_params(&t),
            ["priorities", "scopes"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn empty_any_of_is_unsatisfiable() {
        assert!(!satisfies(&["*".into()], &Expr::AnyOf(vec![])));
        assert!(satisfies(&[], &Expr::AllOf(vec![])));
    }
}
