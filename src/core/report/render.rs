//! The report as text, Markdown or one self-contained HTML page (no external resources: styles inline,
//! the granted-vs-used chart drawn as SVG by a small inline script from the report's own JSON).

use std::fmt::Write;

use super::{Finding, Report};

fn tags(f: &Finding) -> String {
    let t = &f.tags;
    t.owasp_agentic
        .iter()
        .chain(t.owasp_nhi)
        .chain(t.maestro.iter())
        .chain(t.nist_ai_rmf)
        .chain(t.mitre_atlas)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(used: usize, granted: usize) -> String {
    (used * 100).checked_div(granted).map_or_else(|| "-".into(), |p| format!("{p}%"))
}

/// Plain text, one block per agent.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "agentid least-privilege report — generated {} — {} records since {}",
        r.generated_at,
        r.records,
        r.since.as_deref().unwrap_or("the start of the trail")
    );
    for a in &r.agents {
        let _ = writeln!(
            s,
            "\nagent {}/{} (owner {}){}: {} of {} granted permissions used ({}); calls allowed {}, denied {}, approval required {}; tokens {}; API requests {}; last seen {}",
            a.namespace,
            a.name,
            a.owner,
            if a.suspended { " SUSPENDED" } else { "" },
            a.used,
            a.granted,
            pct(a.used, a.granted),
            a.allowed,
            a.denied,
            a.approval_required,
            a.tokens_issued,
            a.api_calls,
            a.last_seen.as_deref().unwrap_or("never")
        );
        for g in &a.grants {
            let _ = writeln!(
                s,
                "  grant {} [{}] until {}: used {}/{} — {}",
                g.name,
                g.phase.as_deref().unwrap_or("-"),
                g.valid_until.as_deref().unwrap_or("(no end)"),
                g.used.len(),
                g.granted.len(),
                if g.used.is_empty() { "nothing used".to_string() } else { g.used.join(", ") }
            );
        }
        for f in &a.findings {
            let _ = writeln!(s, "  ! {} {}: {}  [{}]", f.kind.as_str(), f.subject, f.detail, tags(f));
        }
        for g in a.grants.iter().filter(|g| g.suggested.is_some() && g.used.len() < g.granted.len()) {
            let _ = writeln!(s, "  suggested narrower spec for grant {}:", g.name);
            if let Ok(y) = serde_norway::to_string(&g.suggested) {
                for l in y.lines() {
                    let _ = writeln!(s, "    {l}");
                }
            }
        }
    }
    if !r.findings.is_empty() {
        let _ = writeln!(s, "\ncluster");
        for f in &r.findings {
            let _ = writeln!(s, "  ! {} {}: {}  [{}]", f.kind.as_str(), f.subject, f.detail, tags(f));
        }
    }
    s
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown: a summary table, then findings with their framework items, then suggestions.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# agentid least-privilege report\n");
    let _ = writeln!(
        s,
        "Generated {}; {} audit records since {}. Framework items are agentid's own mapping (docs/frameworks.md).\n",
        r.generated_at,
        r.records,
        r.since.as_deref().unwrap_or("the start of the trail")
    );
    let _ =
        writeln!(s, "| agent | owner | granted | used | allowed | denied | last seen |\n|---|---|---|---|---|---|---|");
    for a in &r.agents {
        let _ = writeln!(
            s,
            "| {}/{} | {} | {} | {} ({}) | {} | {} | {} |",
            md_cell(&a.namespace),
            md_cell(&a.name),
            md_cell(&a.owner),
            a.granted,
            a.used,
            pct(a.used, a.granted),
            a.allowed,
            a.denied,
            a.last_seen.as_deref().unwrap_or("never")
        );
    }
    let _ = writeln!(s, "\n## Findings\n\n| finding | agent | subject | detail | frameworks |\n|---|---|---|---|---|");
    for a in &r.agents {
        for f in &a.findings {
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {} |",
                f.kind.as_str(),
                md_cell(&a.namespace),
                md_cell(&a.name),
                md_cell(&f.subject),
                md_cell(&f.detail),
                tags(f)
            );
        }
    }
    for f in &r.findings {
        let _ =
            writeln!(s, "| {} | | {} | {} | {} |", f.kind.as_str(), md_cell(&f.subject), md_cell(&f.detail), tags(f));
    }
    let mut first = true;
    for a in &r.agents {
        for g in a.grants.iter().filter(|g| g.suggested.is_some() && g.used.len() < g.granted.len()) {
            if first {
                let _ = writeln!(s, "\n## Narrower grants, from observed use\n");
                first = false;
            }
            let _ = writeln!(s, "`{}/{}` grant `{}`:\n\n```yaml", a.namespace, a.name, g.name);
            if let Ok(y) = serde_norway::to_string(&g.suggested) {
                s.push_str(&y);
            }
            let _ = writeln!(s, "```\n");
        }
    }
    s
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element: no `<` (so no `</script>`), no U+2028/2029.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace('<', "\\u003c").replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029")
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}\
.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 4px;margin:1px;font-size:12px}\
pre{background:#f7f7f7;padding:8px}#chart text{font-size:12px}";

/// Draws one bar pair per agent (granted, used) into `svg#chart` from the JSON in `#report-data`.
const SCRIPT: &str = r#"(function(){
var data=JSON.parse(document.getElementById('report-data').textContent);
var svg=document.getElementById('chart'),ns='http://www.w3.org/2000/svg';
var max=1;data.forEach(function(a){if(a.granted>max)max=a.granted;});
var row=34,left=220,width=520;svg.setAttribute('height',String(row*data.length+30));
function el(n,attrs,text){var e=document.createElementNS(ns,n);for(var k in attrs)e.setAttribute(k,attrs[k]);if(text)e.textContent=text;svg.appendChild(e);return e;}
data.forEach(function(a,i){var y=10+i*row;
el('text',{x:0,y:y+14},a.agent);
el('rect',{x:left,y:y,height:12,width:Math.round(width*a.granted/max),fill:'#c9d4f2','class':'granted','data-agent':a.agent,'data-value':a.granted});
el('rect',{x:left,y:y+13,height:12,width:Math.round(width*a.used/max),fill:'#2b6cb0','class':'used','data-agent':a.agent,'data-value':a.used});
el('text',{x:left+width+8,y:y+14},a.used+' / '+a.granted+' used');});
document.getElementById('chart-status').textContent='chart: '+data.length+' agents';
})();"#;

/// One self-contained page: summary and chart, findings with framework items, suggested grants.
pub fn html(r: &Report) -> String {
    let chart: Vec<serde_json::Value> = r
        .agents
        .iter()
        .map(|a| serde_json::json!({"agent": format!("{}/{}", a.namespace, a.name), "granted": a.granted, "used": a.used}))
        .collect();
    let mut s = String::with_capacity(16 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>agentid least-privilege report</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        s,
        "<h1>agentid least-privilege report</h1><p>Generated {}; {} audit records since {}. Framework items are agentid's own mapping (docs/frameworks.md), not an official crosswalk.</p>",
        escape(&r.generated_at),
        r.records,
        escape(r.since.as_deref().unwrap_or("the start of the trail"))
    );
    let _ = write!(
        s,
        "<h2>Granted vs used, per agent</h2><svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"30\" role=\"img\" aria-label=\"granted and used permissions per agent\"></svg><p id=\"chart-status\">chart not drawn (scripts off)</p>"
    );
    let _ = write!(
        s,
        "<table id=\"agents\"><tr><th>agent</th><th>owner</th><th>granted</th><th>used</th><th>allowed</th><th>denied</th><th>API requests</th><th>last seen</th></tr>"
    );
    for a in &r.agents {
        let _ = write!(
            s,
            "<tr><td>{}/{}{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&a.namespace),
            escape(&a.name),
            if a.suspended { " <b>suspended</b>" } else { "" },
            escape(&a.owner),
            a.granted,
            a.used,
            pct(a.used, a.granted),
            a.allowed,
            a.denied,
            a.api_calls,
            escape(a.last_seen.as_deref().unwrap_or("never"))
        );
    }
    let _ = write!(
        s,
        "</table><h2>Findings</h2><table id=\"findings\"><tr><th>finding</th><th>subject</th><th>detail</th><th>frameworks</th></tr>"
    );
    let finding_row = |s: &mut String, f: &Finding, owner: &str| {
        let tags: String = tags(f).split(' ').map(|t| format!("<span class=\"tag\">{}</span>", escape(t))).collect();
        let _ = write!(
            s,
            "<tr class=\"finding\" data-kind=\"{}\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            f.kind.as_str(),
            f.kind.as_str(),
            escape(owner),
            escape(&f.subject),
            escape(&f.detail),
            tags
        );
    };
    for a in &r.agents {
        for f in &a.findings {
            finding_row(&mut s, f, &format!("{}/{}: ", a.namespace, a.name));
        }
    }
    for f in &r.findings {
        finding_row(&mut s, f, "");
    }
    s.push_str("</table>");
    let mut first = true;
    for a in &r.agents {
        for g in a.grants.iter().filter(|g| g.suggested.is_some() && g.used.len() < g.granted.len()) {
            if first {
                s.push_str("<h2>Narrower grants, from observed use</h2>");
                first = false;
            }
            let y = serde_norway::to_string(&g.suggested).unwrap_or_default();
            let _ = write!(
                s,
                "<h3>{}/{} grant {}</h3><pre class=\"suggestion\">{}</pre>",
                escape(&a.namespace),
                escape(&a.name),
                escape(&g.name),
                escape(&y)
            );
        }
    }
    let _ = write!(
        s,
        "<script type=\"application/json\" id=\"report-data\">{}</script><script>{SCRIPT}</script></body></html>",
        script_json(&serde_json::Value::Array(chart))
    );
    s
}
