//! `payrun plan --graph dot`: the flow template as a Graphviz digraph. Nodes are tasks (with
//! their operation and delay), edges are labelled success / fail / always; preflight tasks are
//! drawn in their own cluster before the per-item tree.

use crate::compile::{Flow, Task};
use crate::manifest::Link;

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn render(flow: &Flow) -> String {
    let mut out = String::new();
    out.push_str(&format!("digraph {} {{\n", quote(&flow.manifest.batch)));
    out.push_str("  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\"];\n");
    out.push_str(&format!(
        "  item [shape=oval, label={}];\n",
        quote(&format!("each item\\n({})", flow.provider.name))
    ));
    if !flow.preflight.is_empty() {
        out.push_str("  subgraph cluster_preflight {\n    label=\"preflight (once per batch)\";\n");
        for t in &flow.preflight {
            node(&mut out, t, "    ");
        }
        out.push_str("  }\n");
        for t in &flow.preflight {
            out.push_str(&format!(
                "  {} -> item [style=dashed, label=\"then\"];\n",
                quote(&t.tree_path)
            ));
        }
    }
    for t in &flow.tasks {
        node(&mut out, t, "  ");
        out.push_str(&format!("  item -> {};\n", quote(&t.tree_path)));
    }
    out.push_str("}\n");
    out
}

fn node(out: &mut String, t: &Task, indent: &str) {
    let mut label = format!("{}\\n{}", t.id, t.op);
    if let Some(d) = t.delay {
        label.push_str(&format!("\\nafter {}", humantime::format_duration(d)));
    }
    out.push_str(&format!(
        "{indent}{} [label={}];\n",
        quote(&t.tree_path),
        quote(&label)
    ));
    for (link, c) in t.children() {
        node(out, c, indent);
        let (color, style) = match link {
            Link::Success => ("darkgreen", "solid"),
            Link::Fail => ("red3", "solid"),
            Link::Always => ("gray40", "dashed"),
        };
        out.push_str(&format!(
            "{indent}{} -> {} [label={}, color={color}, fontcolor={color}, style={style}];\n",
            quote(&t.tree_path),
            quote(&c.tree_path),
            quote(link.as_str())
        ));
    }
}
