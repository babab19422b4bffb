//! The least-privilege report's HTML page in a real headless browser (Chromium, installed by
//! e2e/tools/chromium.sh when missing; `AGENTID_CHROMIUM` names it): the page's own script draws the
//! granted-vs-used chart, one pair of bars per agent with lengths in proportion, and the findings
//! table is there. Reads what Chromium rendered (`--dump-dom`), not the HTML agentid wrote.
#![cfg(feature = "e2e")]

use std::path::Path;
use std::process::Command;

use agentid::core::audit::record::{Event, Kind, Record, Stamp};

fn record(seq: u64, f: impl FnOnce(&mut Event)) -> String {
    let mut e = Event::new(Kind::Decision);
    e.namespace = Some("shop".into());
    e.agent = Some("billing".into());
    f(&mut e);
    let stamp = Stamp {
        chain: "r1-0".into(),
        seq,
        prev: String::new(),
        id: format!("id{seq}"),
        time: "2099-01-01T00:00:00.000000Z".into(),
        replica: "r1".into(),
    };
    String::from_utf8(Record::new(stamp, e).canonical()).unwrap()
}

fn chromium() -> String {
    std::env::var("AGENTID_CHROMIUM").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/tools/chromium.sh"))
            .output()
            .expect("run e2e/tools/chromium.sh");
        assert!(out.status.success(), "no Chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[start..].split('"').next()?.to_string())
}

#[test]
fn the_report_page_draws_granted_against_used_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("r1-0-000000.jsonl");
    let lines = [
        record(0, |e| {
            e.decision = Some("allow".into());
            e.grant = Some("crm".into());
            e.tool = Some("crm".into());
            e.action = Some("read".into());
            e.destination = Some("https://crm.internal/api/accounts/7".into());
        }),
        record(1, |e| {
            e.decision = Some("deny".into());
            e.tool = Some("payments".into());
            e.reasons = vec!["destination-not-granted".into()];
        }),
    ];
    std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/inventory.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["report", "-o", "html", "--since", "3650d", "--inventory"])
        .arg(&inventory)
        .arg(&trail)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = dir.path().join("report.html");
    std::fs::write(&page, &out.stdout).unwrap();

    let profile = dir.path().join("profile");
    let rendered = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=2000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&rendered.stdout).into_owned();
    assert!(rendered.status.success() && !dom.is_empty(), "{}", String::from_utf8_lossy(&rendered.stderr));

    // Drawn by the page's script in the browser: the status line and the bars exist only in the DOM.
    assert!(dom.contains("chart: 2 agents"), "the chart script did not run: {dom}");
    let rects: Vec<&str> = dom.split("<rect").skip(1).map(|r| r.split('>').next().unwrap()).collect();
    assert_eq!(rects.len(), 4, "a granted and a used bar per agent: {rects:?}");
    let bar = |agent: &str, class: &str| -> (u32, u32) {
        let r = rects
            .iter()
            .find(|r| attr(r, "data-agent").as_deref() == Some(agent) && attr(r, "class").as_deref() == Some(class))
            .unwrap_or_else(|| panic!("no {class} bar for {agent}: {rects:?}"));
        (attr(r, "width").unwrap().parse().unwrap(), attr(r, "data-value").unwrap().parse().unwrap())
    };
    // billing: crm read,write + payments refund granted (3), crm:read used (1); idle: nothing.
    assert_eq!(bar("shop/billing", "granted"), (520, 3));
    assert_eq!(bar("shop/billing", "used"), (173, 1), "a third of the granted bar");
    assert_eq!(bar("shop/idle", "granted").1, 0);
    // The findings table as rendered, with framework tags.
    assert!(dom.contains("data-kind=\"unused-grant\""), "{dom}");
    assert!(dom.contains("data-kind=\"never-used-agent\""), "{dom}");
    assert!(dom.contains("NHI5") && dom.contains("ASI03"), "{dom}");
    assert!(dom.contains("class=\"suggestion\""), "a narrower crm grant is suggested: {dom}");
}
