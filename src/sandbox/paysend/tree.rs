//! Paysend's task-tree semantics, as a pure function: tasks on one level run "in parallel" (here:
//! in order, all before the next level), a task's `success` children run when it succeeds, its
//! `fail` children when it fails, its `always` children either way; the request is finished
//! when no level is left. Each executed task gets the level it ran on, which the handler turns
//! into time (a level takes `level_time`).

use serde_json::Value;

/// JSON kept as its compact text (a tenth of the memory of a `Value` tree), parsed when it is
/// answered with: a request body until it is sealed (`bodies`), and the results `kept` has no
/// fixed-size form for.
pub type Json = Box<serde_json::value::RawValue>;

/// `v` as compact JSON text.
pub fn compact(v: &Value) -> Json {
    serde_json::value::to_raw_value(v).expect("JSON values serialise")
}

/// Compact JSON text back as a `Value`.
pub fn parse(j: &Json) -> Value {
    serde_json::from_str(j.get()).expect("kept JSON parses")
}

/// What executing one task produced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// The task's `result` object as Paysend returns it.
    pub result: Json,
}

impl PartialEq for Outcome {
    fn eq(&self, other: &Outcome) -> bool {
        self.ok == other.ok && self.result.get() == other.result.get()
    }
}

/// A task of the request after evaluation: its outcome and level, or `None` when its parent's
/// result did not lead to it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Executed {
    pub level: usize,
    pub outcome: Option<Outcome>,
    pub success: Vec<Executed>,
    pub fail: Vec<Executed>,
    pub always: Vec<Executed>,
}

/// Evaluates `tasks` level by level. `exec(type, payload, level)` performs one task.
pub fn run(tasks: &[Value], exec: &mut dyn FnMut(&str, &Value, usize) -> Outcome) -> Vec<Executed> {
    // Breadth-first: collect the tasks of each level with where their outcome goes.
    let mut roots: Vec<Executed> = tasks.iter().map(|_| skeleton(0)).collect();
    let mut level: Vec<(Vec<usize>, &Value)> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (vec![i], t))
        .collect();
    let mut depth = 0;
    while !level.is_empty() {
        let mut next = Vec::new();
        for (path, task) in level {
            let ty = task.get("type").and_then(Value::as_str).unwrap_or("");
            let empty = Value::Object(Default::default());
            let payload = task.get("payload").unwrap_or(&empty);
            let outcome = exec(ty, payload, depth);
            let node = at(&mut roots, &path);
            node.level = depth;
            let ok = outcome.ok;
            node.outcome = Some(outcome);
            for (branch, taken) in [("success", ok), ("fail", !ok), ("always", true)] {
                let kids = task
                    .get(branch)
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let slot = match branch {
                    "success" => &mut node.success,
                    "fail" => &mut node.fail,
                    _ => &mut node.always,
                };
                *slot = kids.iter().map(|_| skeleton(depth + 1)).collect();
                if taken {
                    for (i, k) in kids.iter().enumerate() {
                        let mut p = path.clone();
                        p.push(branch_code(branch));
                        p.push(i);
                        next.push((p, k));
                    }
                }
            }
        }
        level = next;
        depth += 1;
    }
    roots
}

fn skeleton(level: usize) -> Executed {
    Executed {
        level,
        outcome: None,
        success: vec![],
        fail: vec![],
        always: vec![],
    }
}

fn branch_code(b: &str) -> usize {
    match b {
        "success" => 0,
        "fail" => 1,
        _ => 2,
    }
}

/// The node at `path` (root index, then pairs of branch code and child index).
fn at<'a>(roots: &'a mut [Executed], path: &[usize]) -> &'a mut Executed {
    let mut node = &mut roots[path[0]];
    for pair in path[1..].chunks(2) {
        node = match pair[0] {
            0 => &mut node.success[pair[1]],
            1 => &mut node.fail[pair[1]],
            _ => &mut node.always[pair[1]],
        };
    }
    node
}

/// How many levels ran.
pub fn depth(tree: &[Executed]) -> usize {
    fn d(e: &Executed) -> usize {
        if e.outcome.is_none() {
            return 0;
        }
        1 + e
            .success
            .iter()
            .chain(&e.fail)
            .chain(&e.always)
            .map(d)
            .max()
            .unwrap_or(0)
    }
    tree.iter().map(d).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs a tree where a task fails when its payload says so, recording the order of calls.
    fn evaluate(tasks: Value) -> (Vec<Executed>, Vec<String>) {
        let mut calls = Vec::new();
        let tree = run(tasks.as_array().unwrap(), &mut |ty, payload, _level| {
            calls.push(ty.to_string());
            let ok = payload.get("fail").is_none();
            Outcome {
                ok,
                result: compact(&json!({"status": if ok { "Success" } else { "Error" }})),
            }
        });
        (tree, calls)
    }

    #[test]
    fn a_fail_child_runs_only_when_its_parent_fails() {
        let (tree, calls) = evaluate(json!([
            {"type": "a", "payload": {}, "success": [{"type": "s"}], "fail": [{"type": "f"}]},
            {"type": "b", "payload": {"fail": true}, "success": [{"type": "s2"}], "fail": [{"type": "f2"}]}
        ]));
        assert_eq!(calls, ["a", "b", "s", "f2"]);
        assert!(
            tree[0].fail[0].outcome.is_none(),
            "a succeeded: its fail child never ran"
        );
        assert!(tree[1].success[0].outcome.is_none());
    }

    #[test]
    fn always_children_run_whatever_the_result() {
        let (_, calls) = evaluate(json!([
            {"type": "a", "payload": {"fail": true}, "always": [{"type": "x"}]},
            {"type": "b", "payload": {}, "always": [{"type": "y"}]}
        ]));
        assert_eq!(calls, ["a", "b", "x", "y"]);
    }

    #[test]
    fn levels_run_one_after_the_other_and_siblings_share_a_level() {
        let (tree, calls) = evaluate(json!([
            {"type": "a", "payload": {}, "success": [{"type": "a1", "success": [{"type": "a11"}]}]},
            {"type": "b", "payload": {}, "success": [{"type": "b1"}]}
        ]));
        assert_eq!(
            calls,
            ["a", "b", "a1", "b1", "a11"],
            "level 0, then level 1, then level 2"
        );
        assert_eq!(tree[0].success[0].success[0].level, 2);
        assert_eq!(tree[1].success[0].level, 1);
        assert_eq!(depth(&tree), 3);
    }
}
