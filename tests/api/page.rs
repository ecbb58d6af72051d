//! The coordinator's pages, driven in headless Chromium over the DevTools protocol,
//! against the real server with a seeded day.
//!
//! `CAREBOARD_SCREENSHOTS=docs cargo test --test api page::` also writes the README's
//! screenshots into that directory.

use std::time::Duration;

use crate::helpers::browser::{Browser, Page};
use crate::helpers::day::{seed_morning, seed_stuck_morning};
use crate::helpers::proxy::Proxy;
use crate::helpers::{body_text, TestApp};
use chrono::Utc;
use serde_json::{json, Value};

/// Writes a PNG of the page into `$CAREBOARD_SCREENSHOTS/name`, if that is set.
async fn screenshot(page: &mut Page, name: &str) {
    use base64::Engine;
    let Some(dir) = std::env::var_os("CAREBOARD_SCREENSHOTS") else {
        return;
    };
    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
}

fn board_url(app: &TestApp, board: impl std::fmt::Display) -> String {
    app.url(&format!("/boards/{board}"))
}

#[tokio::test]
async fn the_live_board_page_shows_a_new_appointment_without_a_reload() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let opened = app
        .data(
            "mutation { openBoard(input: {name: \"Cardiology NY\", specialty: \"cardiology\", region: \"NY\", date: \"2022-07-18\"}) { board { id } } }",
            json!({}),
        )
        .await;
    let board = opened["openBoard"]["board"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut page = browser.open_sized(&board_url(&app, &board), 1280).await;

    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('title').textContent === 'Cardiology NY'",
    )
    .await;
    page.eval("window.__sameDocument = 42").await;
    app.data(
        &format!(
            "mutation {{ requestAppointment(input: {{boardId: \"{board}\", patientName: \"Zoe Quinn\", specialty: \"cardiology\", region: \"NY\", reason: \"palpitations\"}}) {{ position }} }}"
        ),
        json!({}),
    )
    .await;
    page.wait_for(
        "the new appointment on the page",
        "document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    assert_eq!(
        page.eval("window.__sameDocument").await,
        42,
        "no reload happened"
    );
    assert_eq!(
        page.eval("document.getElementById('n-waiting').textContent")
            .await,
        "1"
    );
    // New York's clinic shows New York time.
    let meta = page.text("#meta").await;
    assert!(meta.contains("times in America/New_York"), "{meta}");
    // The setting switches every time shown to another timezone.
    page.eval("{ const z = document.getElementById('zone'); z.value = 'UTC'; z.dispatchEvent(new Event('change')) }")
        .await;
    let meta = page.text("#meta").await;
    assert!(meta.contains("times in UTC"), "{meta}");
}

#[tokio::test]
async fn the_board_pairs_providers_and_patients_flags_who_is_late_and_ticks() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let board = seed_stuck_morning(&app, Utc::now()).await;
    // Patient names are for the coordinator (admins see them masked).
    let coordinator = app.token(crate::helpers::idp::Who::coordinator());
    let facts = app
        .data_as(
            &coordinator,
            "query($id: ID!) { board(id: $id) { providers { id status provider { id } } appointments { id patientName status expectedFinish } currentWait { waitSeconds } } }",
            json!({"id": board}),
        )
        .await;
    let appointment = |name: &str| {
        facts["board"]["appointments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["patientName"] == name)
            .unwrap()
            .clone()
    };
    let ada = appointment("Ada Park");
    let ben = appointment("Ben Okafor");
    assert_eq!(ada["status"], "STARTED");
    assert_eq!(ben["status"], "REQUESTED");
    let quoted = facts["board"]["currentWait"]["waitSeconds"]
        .as_i64()
        .unwrap();
    assert!(
        quoted < 40 * 60,
        "the quote ({quoted} s) is under Ben's 40 minutes"
    );
    let busy = facts["board"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "ASSIGNED")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A tablet in portrait.
    let mut page = browser.open_sized(&board_url(&app, board), 820).await;
    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.querySelectorAll('#waiting li[data-id]').length === 1",
    )
    .await;

    // Who has whom, both ways; the two Dr. Grace Kims are told apart.
    let ada_row = page
        .text(&format!(
            "#progress li[data-id=\"{}\"]",
            ada["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        ada_row.contains("with Dr. Grace Kim (pediatrics; TX)"),
        "{ada_row}"
    );
    let provider_row = page
        .text(&format!("#providers li[data-id=\"{busy}\"]"))
        .await;
    assert!(
        provider_row.contains("in appointment with Ada Park"),
        "{provider_row}"
    );
    let names = page
        .eval("[...document.querySelectorAll('#providers li[data-id] .who')].map(e => e.textContent).sort()")
        .await;
    assert_eq!(
        names,
        json!([
            "Dr. Grace Kim (pediatrics; TX)",
            "Dr. Grace Kim (pediatrics; TX, OK)"
        ])
    );

    // Ben has waited 40 minutes, longer than a new patient is quoted: late. Ada's
    // appointment has run past the usual 20 minutes: overdue.
    let ben_li = format!("#waiting li[data-id=\"{}\"]", ben["id"].as_str().unwrap());
    page.wait_for(
        "Ben flagged late",
        &format!("document.querySelector('{ben_li}').classList.contains('late')"),
    )
    .await;
    assert_eq!(page.text("#n-late").await, "1 late");
    assert_eq!(page.text("#n-overdue").await, "1 overdue");
    assert!(page.text(&ben_li).await.contains("LATE"));
    screenshot(&mut page, "board-tablet.png").await;

    // The wait ticks with no Board change.
    let version_before = page.text("#meta").await;
    let wait_before = page.text(&format!("{ben_li} .elapsed")).await;
    assert!(wait_before.starts_with("waiting 4"), "{wait_before}");
    page.wait_for(
        "the wait to tick",
        &format!(
            "document.querySelector('{ben_li} .elapsed').textContent !== {}",
            serde_json::to_string(&wait_before).unwrap()
        ),
    )
    .await;
    assert_eq!(
        page.text("#meta").await,
        version_before,
        "no new version came"
    );

    // Search by provider finds their patient; the status filter narrows the providers.
    page.eval("{ const s = document.getElementById('search'); s.value = 'okafor'; s.dispatchEvent(new Event('input')) }")
        .await;
    assert_eq!(
        page.eval(
            "[...document.querySelectorAll('li[data-id]:not([hidden])')].map(li => li.dataset.id)"
        )
        .await,
        json!([ben["id"]])
    );
    page.eval("{ const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); const p = document.getElementById('provider-status'); p.value = 'PAUSED'; p.dispatchEvent(new Event('input')) }")
        .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#providers li[data-id]:not([hidden])').length")
            .await,
        1
    );
    page.eval("{ const p = document.getElementById('provider-status'); p.value = ''; p.dispatchEvent(new Event('input')) }")
        .await;
    // Only the late and overdue: Ben and Ada.
    page.eval("{ const s = document.getElementById('show'); s.value = 'flagged'; s.dispatchEvent(new Event('input')) }")
        .await;
    let mut shown: Vec<String> = serde_json::from_value(
        page.eval(
            "[...document.querySelectorAll('li[data-id]:not([hidden])')].map(li => li.dataset.id)",
        )
        .await,
    )
    .unwrap();
    shown.sort();
    let mut flagged = vec![
        ada["id"].as_str().unwrap().to_string(),
        ben["id"].as_str().unwrap().to_string(),
    ];
    flagged.sort();
    assert_eq!(shown, flagged);
    page.eval("{ const s = document.getElementById('show'); s.value = 'all'; s.dispatchEvent(new Event('input')) }")
        .await;

    // A colleague takes Ben: the flag clears.
    let hiro = app
        .data(
            "mutation { registerProvider(input: {name: \"Dr. Hiro Tanaka\", specialties: [\"pediatrics\"], licensedRegions: [\"TX\"]}) { provider { id } } }",
            json!({}),
        )
        .await["registerProvider"]["provider"]["id"]
        .clone();
    let shift = app
        .data(
            "mutation($b: ID!, $p: ID!) { joinBoard(input: {boardId: $b, providerId: $p}) { shift { id } } }",
            json!({"b": board, "p": hiro}),
        )
        .await["joinBoard"]["shift"]["id"]
        .clone();
    app.data(
        "mutation($a: ID!, $s: ID!, $t: DateTime!) { scheduleAppointment(input: {appointmentId: $a, shiftId: $s, estimatedTime: $t}) { version } }",
        json!({"a": ben["id"], "s": shift, "t": Utc::now().to_rfc3339()}),
    )
    .await;
    page.wait_for(
        "Ben scheduled with Dr. Hiro Tanaka",
        &format!(
            "(document.querySelector('#scheduled li[data-id=\"{}\"]') || {{innerText: ''}}).innerText.includes('with Dr. Hiro Tanaka')",
            ben["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(page.text("#n-late").await, "0 late");
    assert_eq!(
        page.eval("document.querySelectorAll('li.late').length")
            .await,
        0
    );
}

/// What `board(asOf)` answers, as the page's lists show it: ids by column, provider
/// statuses, and the version.
async fn expected_at(app: &TestApp, board: uuid::Uuid, at: &str) -> Value {
    let data = app
        .data(
            "query($id: ID!, $at: DateTime!) { board(id: $id, asOf: $at) { version appointments { id status } providers { id status } } }",
            json!({"id": board, "at": at}),
        )
        .await;
    let b = &data["board"];
    let ids = |status: &str| {
        let mut v: Vec<String> = b["appointments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == status)
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let mut providers: Vec<(String, String)> = b["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    providers.sort();
    json!({
        "version": format!("version {}", b["version"]),
        "waiting": ids("REQUESTED"),
        "scheduled": ids("SCHEDULED"),
        "progress": ids("STARTED"),
        "providers": providers,
    })
}

const SHOWN: &str = "(() => {
  const ids = (list) => [...document.querySelectorAll('#' + list + ' li[data-id]')].map(li => li.dataset.id).sort();
  const providers = [...document.querySelectorAll('#providers li[data-id]')].map(li => [li.dataset.id, li.dataset.status])
    .sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
  return { version: document.getElementById('meta').textContent.match(/version \\d+/)[0],
    waiting: ids('waiting'), scheduled: ids('scheduled'), progress: ids('progress'), providers };
})()";

#[tokio::test]
async fn replaying_the_day_shows_what_board_as_of_returns_and_back_to_live_resumes() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let scenario = seed_morning(&app, 1).await;
    let board = scenario.boards[0].id;
    let mut page = browser.open_sized(&board_url(&app, board), 1280).await;
    page.wait_for(
        "the page live with the day's timeline",
        "document.getElementById('conn').textContent === 'live' && Number(document.getElementById('scrub').max) > 50 && document.querySelectorAll('.peak-button').length > 0",
    )
    .await;
    screenshot(&mut page, "board-live.png").await;

    // The slider works from the keyboard: an arrow key steps back from live into the
    // replay.
    page.eval("document.getElementById('scrub').focus()").await;
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": "ArrowLeft", "code": "ArrowLeft", "windowsVirtualKeyCode": 37}),
        )
        .await;
    }
    page.wait_for(
        "a step back by keyboard",
        "document.body.dataset.mode === 'replay' && document.body.dataset.shownAt === document.body.dataset.replayAt",
    )
    .await;

    // A moment chosen on the timeline: the page shows exactly board(asOf) then.
    let max: i64 = page
        .eval("Number(document.getElementById('scrub').max)")
        .await
        .as_i64()
        .unwrap();
    for index in [max / 3, max - 5] {
        page.eval(&format!(
            "{{ const s = document.getElementById('scrub'); s.value = '{index}'; s.dispatchEvent(new Event('input')) }}"
        ))
        .await;
        page.wait_for(
            "the chosen moment shown",
            "document.body.dataset.mode === 'replay' && document.body.dataset.shownAt === document.body.dataset.replayAt && !document.body.dataset.loading",
        )
        .await;
        let at = page.eval("document.body.dataset.replayAt").await;
        let expected = expected_at(&app, board, at.as_str().unwrap()).await;
        assert_eq!(page.eval(SHOWN).await, expected, "at {at}");
    }

    // A peak of the longest wait, chosen from the chart: the Board as it stood then,
    // with patients waiting.
    page.eval("document.querySelector('#chart .peak').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        .await;
    page.wait_for(
        "the peak shown",
        "document.body.dataset.shownAt === document.body.dataset.replayAt && !document.body.dataset.loading",
    )
    .await;
    let at = page.eval("document.body.dataset.replayAt").await;
    let expected = expected_at(&app, board, at.as_str().unwrap()).await;
    assert_eq!(page.eval(SHOWN).await, expected, "at the peak {at}");
    assert!(!expected["waiting"].as_array().unwrap().is_empty());
    assert!(page.text("#banner").await.starts_with("Replaying"));
    screenshot(&mut page, "board-replay.png").await;

    // The moment is in the address: opened elsewhere, it shows the same Board.
    let link = page.eval("location.href").await;
    let mut colleague = browser.open_sized(link.as_str().unwrap(), 1280).await;
    colleague
        .wait_for(
            "the linked moment",
            &format!("document.body.dataset.shownAt === {at} && !document.body.dataset.loading"),
        )
        .await;
    assert_eq!(colleague.eval(SHOWN).await, expected, "the linked moment");

    // While replaying, a new request does not move the Board shown...
    let request = format!(
        "mutation {{ requestAppointment(input: {{boardId: \"{board}\", patientName: \"Zoe Quinn\", specialty: \"pediatrics\", region: \"TX\", reason: \"earache\"}}) {{ position }} }}"
    );
    app.data(&request, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!page.text("#waiting").await.contains("Zoe Quinn"));
    // ...and back to live shows it, and later changes too.
    page.eval("document.getElementById('to-live').click()")
        .await;
    page.wait_for(
        "live again, with the new request",
        "document.body.dataset.mode === 'live' && document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    assert!(page.eval("document.getElementById('banner').hidden").await == true);
    app.data(&request.replace("Zoe Quinn", "Yara Silva"), json!({}))
        .await;
    page.wait_for(
        "a later change live",
        "document.getElementById('waiting').innerText.includes('Yara Silva')",
    )
    .await;
}

#[tokio::test]
async fn the_index_opens_on_the_newest_date_and_updates_without_a_reload() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    // An older Board, then a day of two clinics.
    app.data(
        "mutation { openBoard(input: {name: \"Old clinic\", specialty: \"cardiology\", region: \"NY\", date: \"2020-01-06\"}) { board { id } } }",
        json!({}),
    )
    .await;
    let scenario = seed_morning(&app, 2).await;
    let today = scenario.date.to_string();
    let mut page = browser.open_sized(&app.url("/boards"), 1024).await;
    page.wait_for(
        "two Boards listed, live",
        "document.querySelectorAll('#rows tr').length === 2 && document.getElementById('conn').textContent === 'live'",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('date').value").await,
        today.as_str()
    );
    page.eval("window.__sameDocument = 7").await;

    let board = scenario.boards[0].id;
    let row = format!("#rows tr[data-id=\"{board}\"]");
    let cells = |page_text: String| -> Vec<String> {
        page_text
            .split('\t')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let before = cells(page.text(&row).await);
    let waiting: i64 = before[4].parse().unwrap();
    app.data(
        &format!(
            "mutation {{ requestAppointment(input: {{boardId: \"{board}\", patientName: \"Zoe Quinn\", specialty: \"pediatrics\", region: \"TX\", reason: \"earache\"}}) {{ position }} }}"
        ),
        json!({}),
    )
    .await;
    page.wait_for(
        "the waiting count to move",
        &format!(
            "document.querySelector('{row}').children[4].textContent === '{}'",
            waiting + 1
        ),
    )
    .await;
    assert_eq!(page.eval("window.__sameDocument").await, 7, "no reload");
    screenshot(&mut page, "boards-index.png").await;
    // Someone is waiting, so the longest wait ticks.
    let longest = page
        .eval(&format!(
            "document.querySelector('{row}').children[5].textContent"
        ))
        .await;
    assert!(
        longest.as_str().unwrap().contains(':') || longest.as_str().unwrap().contains('h'),
        "{longest}"
    );
}

#[tokio::test]
async fn the_pages_keep_scripts_and_styles_in_files_of_their_own() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for path in ["/boards", "/boards/00000000-0000-0000-0000-000000000000"] {
        let html = body_text(http.get(app.url(path))).await;
        // Every script has a src, and no element carries inline style or handlers: a
        // `script-src 'self'; style-src 'self'` policy leaves the page working.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains("src=\"/static/"), "inline script in {path}");
        }
        assert!(!html.contains("<style"), "inline style in {path}");
        assert!(!html.contains(" style="), "style attribute in {path}");
        assert!(!html.contains(" onclick="), "inline handler in {path}");
    }
    for (file, kind) in [
        ("client.js", "text/javascript"),
        ("board.js", "text/javascript"),
        ("boards.js", "text/javascript"),
        ("careboard.css", "text/css"),
    ] {
        let res = http
            .get(app.url(&format!("/static/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{file}");
        let content_type = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with(kind), "{file}: {content_type}");
        assert!(!res.text().await.unwrap().is_empty());
    }
    let missing = http
        .get(app.url("/static/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing = http.get(app.url("/static/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_disconnected_board_is_greyed_out_says_since_when_and_resumes() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    let board = seed_stuck_morning(&app, Utc::now()).await;
    let proxy = Proxy::start(app.server.addr).await;
    let mut page = browser
        .open_sized(&proxy.url(&format!("/boards/{board}")), 1280)
        .await;
    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.querySelectorAll('#waiting li[data-id]').length === 1",
    )
    .await;
    assert_eq!(
        page.eval("document.body.classList.contains('stale')").await,
        false
    );

    proxy.cut();
    page.wait_for(
        "the page to notice",
        "document.body.classList.contains('stale') && document.getElementById('conn').textContent.startsWith('disconnected since ')",
    )
    .await;
    let banner = page.text("#banner").await;
    assert!(banner.starts_with("Disconnected since "), "{banner}");
    // The Board is greyed out.
    assert_eq!(
        page.eval("getComputedStyle(document.getElementById('columns')).opacity !== '1'")
            .await,
        true
    );

    // A change made while the page was away arrives once it is back.
    app.data(
        &format!(
            "mutation {{ requestAppointment(input: {{boardId: \"{board}\", patientName: \"Zoe Quinn\", specialty: \"pediatrics\", region: \"TX\", reason: \"earache\"}}) {{ position }} }}"
        ),
        json!({}),
    )
    .await;
    proxy.restore();
    page.wait_for(
        "live again with the missed change",
        "document.getElementById('conn').textContent === 'live' && !document.body.classList.contains('stale') && document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('banner').hidden").await,
        true
    );
}
