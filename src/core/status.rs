//! Status writes as JSON merge patches that also remove what the new status
//! leaves out (a plain merge patch would keep stale fields forever).

use serde::Serialize;
use serde_json::Value;

/// `{"status": new}`, with `null` for every top-level field `old` has and `new` lacks, and without the
/// fields `new` leaves as they were: a field someone else writes meanwhile (the decision point's task
/// usage) is never overwritten with a stale copy.
pub fn merge_patch<T: Serialize>(old: Option<&T>, new: &T) -> Value {
    let mut value = serde_json::to_value(new).unwrap_or_else(|_| Value::Object(Default::default()));
    if let (Some(Value::Object(old)), Value::Object(map)) = (old.and_then(|o| serde_json::to_value(o).ok()), &mut value)
    {
        let removed: Vec<String> = old.keys().filter(|k| !map.contains_key(*k)).cloned().collect();
        map.retain(|key, v| old.get(key) != Some(v));
        for key in removed {
            map.insert(key, Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentIdentityStatus;

    #[test]
    fn removed_fields_become_null_and_kept_fields_stay() {
        let old = AgentIdentityStatus {
            service_account_name: Some("agent-a".into()),
            spiffe_id: Some("s".into()),
            ..Default::default()
        };
        let new = AgentIdentityStatus { spiffe_id: Some("s".into()), ..Default::default() };
        let p = merge_patch(Some(&old), &new);
        assert_eq!(p["status"]["serviceAccountName"], Value::Null);
        assert!(p["status"].as_object().unwrap().contains_key("serviceAccountName"));
        assert!(p["status"].get("spiffeID").is_none(), "unchanged fields are not sent");
        assert_eq!(merge_patch(None, &new)["status"], serde_json::json!({"spiffeID": "s"}));
    }
}
