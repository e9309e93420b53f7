//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against a real node. Each step checks what a page shows against the API, and saves a
//! screenshot under `target/console/` for a reviewer to look at.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::started;
use serde_json::{Value, json};
use weir_broker::cli::Client;

/// How long a page gets to show what a step waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The key WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session through a chromedriver of its own, ended when dropped.
struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://127.0.0.1:{port}");
        common::eventually("chromedriver ready", PAGE_TIMEOUT, || {
            agent
                .get(format!("{url}/status"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        let mut browser = Browser {
            driver,
            base: url.clone(),
            agent,
        };
        let session = browser.send(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900"],
                },
            }}}),
        );
        let id = session["sessionId"].as_str().unwrap().to_owned();
        browser.base = format!("{url}/session/{id}");
        browser
    }

    /// A WebDriver command; answers its `value`, failing on a WebDriver error.
    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(body),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    /// Goes to `url` and waits until the console has drawn its route, so nothing read after
    /// comes from the page before.
    fn open(&self, url: &str) {
        self.send("POST", "/url", json!({ "url": url }));
        self.until(
            &format!("{url} drawn"),
            "const path = location.hash.replace(/^#\\/?/, ''); \
             return document.getElementById('main').dataset.shown === path;",
            |shown| shown == &json!(true),
        );
    }

    /// Runs `script` in the page with `args` and answers what it returns.
    fn run(&self, script: &str, args: Value) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// The text of the first element `selector` finds, once it has some (the page loads data
    /// after it draws).
    fn text(&self, selector: &str) -> String {
        let mut text = String::new();
        common::eventually(&format!("text in {selector}"), PAGE_TIMEOUT, || {
            text = self
                .run(
                    "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                    json!([selector]),
                )
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !text.is_empty()
        });
        text
    }

    /// Waits until `check` accepts what `script` returns.
    fn until(&self, what: &str, script: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let value = self.run(script, json!([]));
            if check(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: the page shows {value}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, selector: &str) -> String {
        let found = self.send(
            "POST",
            "/element",
            json!({"using": "css selector", "value": selector}),
        );
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    fn click(&self, selector: &str) {
        let id = self.element(selector);
        self.send("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector);
        self.send("POST", &format!("/element/{id}/clear"), json!({}));
        self.send(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Presses `key` with the `held` keys (modifiers) down.
    fn press(&self, held: &[&str], key: &str) {
        let mut actions = Vec::new();
        actions.extend(held.iter().map(|k| json!({"type": "keyDown", "value": k})));
        actions.push(json!({"type": "keyDown", "value": key}));
        actions.push(json!({"type": "keyUp", "value": key}));
        actions.extend(
            held.iter()
                .rev()
                .map(|k| json!({"type": "keyUp", "value": k})),
        );
        self.send(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    /// Presses Shift+Tab until the focus is on `target` (an element's id, else its text),
    /// which must come within the page's first [`TAB_STOPS_MAX`] stops back.
    fn tab_back_to(&self, target: &str) {
        for _ in 0..TAB_STOPS_MAX {
            if self.run(ACTIVE, json!([])) == target {
                return;
            }
            self.press(&[SHIFT], TAB);
        }
        panic!("{target} is not within {TAB_STOPS_MAX} tab stops back");
    }

    /// Saves the page as `target/console/<name>.png`.
    fn screenshot(&self, name: &str) {
        let png = self.send("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// WebDriver's key values.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";
const CONTROL: &str = "\u{E009}";

/// The focused element: its id, else its text.
const ACTIVE: &str = "return document.activeElement.id || document.activeElement.innerText;";
/// Tab stops a keyboard user passes at most from the page's content back to its header.
const TAB_STOPS_MAX: usize = 20;

/// Offsets of the records the record browser shows.
/// The text of the page's first table, or nothing.
const MAIN_TABLE_TEXT: &str =
    "const t = document.querySelector('main table'); return t ? t.innerText : '';";

const SHOWN_OFFSETS: &str =
    "return [...document.querySelectorAll('#records article')].map(a => Number(a.dataset.offset));";

/// Makes `topic` with one partition and `records` records, `value(i)` the i-th.
fn produce(api: &Client, topic: &str, records: usize, value: impl Fn(usize) -> String) {
    api.call(
        "POST",
        "/v1/topics",
        Some(&json!({"name": topic, "partitions": 1})),
    )
    .unwrap();
    for chunk in (0..records).collect::<Vec<_>>().chunks(RECORDS_PER_REQUEST) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({"key": format!("k{i}"), "value": value(i)}))
            .collect();
        api.call(
            "POST",
            &format!("/v1/topics/{topic}/records"),
            Some(&json!({ "records": batch })),
        )
        .unwrap();
    }
}

/// Records a produce request of the test sends (the API takes up to 100 000).
const RECORDS_PER_REQUEST: usize = 50_000;

/// Records of the topic the record browser pages through.
const BROWSED_RECORDS: usize = 1_000_000;

/// Sets a form field the way a script would (selects, and text WebDriver types slowly).
fn set(browser: &Browser, selector: &str, value: &str) {
    browser.run(
        "document.querySelector(arguments[0]).value = arguments[1];",
        json!([selector, value]),
    );
}

#[test]
fn the_console_signs_in_and_shows_what_the_api_holds_on_every_page() {
    if !common::have("chromedriver", "apt-get install chromium chromium-driver") {
        return;
    }
    let (_dir, node, _) = started(&["--admin-token", "s3cret"]);
    let api = Client::new(&node.url(), Some("s3cret".into()));
    produce(&api, "logs", BROWSED_RECORDS, |i| format!("{{\"n\":{i}}}"));
    produce(&api, "events", 2000, |i| {
        let status = if i % 10 == 0 { 500 } else { 200 };
        format!("{{\"n\":{i},\"status\":{status}}}")
    });
    api.call(
        "POST",
        "/v1/groups/readers/offsets",
        Some(&json!({"topic": "logs", "partition": 0, "offset": 400_000})),
    )
    .unwrap();
    let browser = Browser::start();
    let ui = format!("{}/ui/", node.url());

    // Without the token the console asks for it, and a wrong one shows the API's words.
    browser.open(&ui);
    browser.text("#login");
    browser.type_into("#token", "guess");
    browser.click("#login button");
    assert!(browser.text(".error").contains("token sent is wrong"));
    browser.type_into("#token", "s3cret");
    browser.click("#login button");
    let cards = browser.text("#node-cards");
    let summary = api.call("GET", "/v1/node", None).unwrap();
    assert!(
        cards.contains(summary["version"].as_str().unwrap()),
        "{cards}"
    );
    assert!(cards.contains("Topics\n2"), "{cards}");
    assert!(cards.contains("Groups\n1"), "{cards}");

    browser.open(&format!("{ui}#/topics"));
    let topics = browser.text("main table");
    assert!(topics.contains("logs\t1\t1,000,000"), "{topics}");
    assert!(topics.contains("events\t1\t2,000"), "{topics}");
    browser.screenshot("topics");

    // A topic made, changed and deleted through the forms, as the API then has it.
    set(&browser, "#create-topic input[name=name]", "made");
    set(&browser, "#create-topic input[name=partitions]", "2");
    set(
        &browser,
        "#create-topic input[name=configs]",
        "retention.ms=3600000",
    );
    browser.click("#create-topic button[type=submit]");
    browser.until(
        "the new topic listed",
        "return document.querySelector('main table').innerText;",
        |v| v.as_str().is_some_and(|t| t.contains("made\t2\t0\t")),
    );
    let made = api.call("GET", "/v1/topics/made", None).unwrap();
    assert_eq!(made["configs"]["retention.ms"], "3600000");
    browser.open(&format!("{ui}#/topics/made"));
    browser.text("#configs table");
    set(
        &browser,
        "#configs form input[aria-label='Config key']",
        "retention.ms",
    );
    set(
        &browser,
        "#configs form input[aria-label='Config value']",
        "fast",
    );
    browser.click("#configs form button[type=submit]");
    let refused = browser.text("#configs .error");
    assert!(refused.contains("retention.ms"), "{refused}");
    set(
        &browser,
        "#configs form input[aria-label='Config value']",
        "7200000",
    );
    browser.click("#configs form button[type=submit]");
    browser.until(
        "the config changed",
        "const t = document.querySelector('#configs table'); return t ? t.innerText : '';",
        |v| v.as_str().is_some_and(|t| t.contains("7200000")),
    );
    let made = api.call("GET", "/v1/topics/made", None).unwrap();
    assert_eq!(made["configs"]["retention.ms"], "7200000");
    browser.open(&format!("{ui}#/topics"));
    // The list drawn (the topic page's tables may still be there just after the move).
    browser.until("the topic list", MAIN_TABLE_TEXT, |v| {
        v.as_str().is_some_and(|t| t.contains("\nmade\t"))
    });
    // The confirmation asks for the topic's name: a wrong one deletes nothing.
    let delete_made = |typed: &str| {
        browser.run(
            "[...document.querySelectorAll('main tr')].find(r => r.innerText.startsWith('made\\t'))
                .querySelector('button.danger').click();",
            json!([]),
        );
        browser.send("POST", "/alert/text", json!({ "text": typed }));
        browser.send("POST", "/alert/accept", json!({}));
    };
    delete_made("logs");
    assert!(api.call("GET", "/v1/topics/made", None).is_ok());
    delete_made("made");
    browser.until(
        "the topic gone",
        "return document.querySelector('main table').innerText;",
        |v| v.as_str().is_some_and(|t| !t.contains("made")),
    );
    assert!(api.call("GET", "/v1/topics/made", None).is_err());

    // The record browser pages by offset: oldest first, then newest and backwards, and a
    // page from a chosen offset, all without reading the whole topic.
    browser.open(&format!("{ui}#/topics/logs"));
    let first = browser.until("the first page", SHOWN_OFFSETS, |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(first, json!((0..50).collect::<Vec<_>>()));
    assert!(browser.text("#records article pre").contains("\"n\": 0"));
    browser.click("#records-newer");
    browser.until("the next page", SHOWN_OFFSETS, |v| v[0] == 50);
    set(&browser, "#record-from", "newest");
    browser.click("#record-form button[type=submit]");
    let newest = browser.until("the newest page", SHOWN_OFFSETS, |v| v[0] == 999_950);
    assert_eq!(newest, json!((999_950..1_000_000).collect::<Vec<_>>()));
    browser.click("#records-older");
    browser.until("the page before", SHOWN_OFFSETS, |v| v[0] == 999_900);
    // A text to look for goes to the node, which searches the partition, not the page: from
    // the oldest, the next matches, then back.
    set(&browser, "#record-from", "oldest");
    browser.type_into("#record-filter", "7777}");
    browser.click("#record-form button[type=submit]");
    let matches = |from: u64| json!((0..50).map(|k| from + k * 10_000).collect::<Vec<_>>());
    browser.until("the first matches", SHOWN_OFFSETS, |v| *v == matches(7_777));
    let api_matches = api
        .call(
            "GET",
            "/v1/topics/logs/records?contains=7777%7D&limit=50",
            None,
        )
        .unwrap();
    let api_offsets: Vec<_> = api_matches["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].clone())
        .collect();
    assert_eq!(json!(api_offsets), matches(7_777));
    assert!(browser.text("#records-status").contains("containing"));
    browser.click("#records-newer");
    browser.until("the next matches", SHOWN_OFFSETS, |v| {
        *v == matches(507_777)
    });
    browser.click("#records-older");
    browser.until("the matches before", SHOWN_OFFSETS, |v| {
        *v == matches(7_777)
    });
    set(&browser, "#record-filter", "");
    set(&browser, "#record-from", "offset");
    set(&browser, "#record-at", "523456");
    browser.click("#record-form button[type=submit]");
    browser.until("the page at an offset", SHOWN_OFFSETS, |v| v[0] == 523_456);
    browser.screenshot("records");

    // A group: its committed offset and lag as the API has them, and a reset previewed, then
    // applied.
    browser.open(&format!("{ui}#/groups"));
    // The group list drawn (the records page's table may still be there just after the move).
    browser.until("the group list", MAIN_TABLE_TEXT, |v| {
        v.as_str().is_some_and(|t| t.contains("readers"))
    });
    browser.open(&format!("{ui}#/groups/readers"));
    let offsets = browser.text("#group-offsets table");
    assert!(
        offsets.contains("logs\t0\t400,000\t1,000,000\t600,000"),
        "{offsets}"
    );
    browser.type_into("#reset-topic", "logs");
    set(&browser, "#reset-to", "earliest");
    browser.run(
        "document.querySelector('#reset-topic').form.requestSubmit();",
        json!([]),
    );
    let preview = browser.text("#reset-preview table");
    assert!(preview.contains("logs\t0\t400,000\t0"), "{preview}");
    let committed = |api: &Client| {
        api.call("GET", "/v1/groups/readers", None).unwrap()["offsets"][0]["committed"].clone()
    };
    assert_eq!(committed(&api), 400_000, "a preview changes nothing");
    browser.click("#reset-apply");
    browser.until(
        "the reset applied",
        "return document.querySelector('#reset-preview').innerText;",
        |v| v.as_str().is_some_and(|t| t.contains("Offsets reset")),
    );
    assert_eq!(committed(&api), 0);
    browser.screenshot("group");

    // A plugin uploaded and a pipeline made through the forms, then running.
    browser.open(&format!("{ui}#/pipelines"));
    browser.text("#pipelines");
    let wasm = weir_tests::wasm::plugin_wasm("regex-filter").unwrap();
    browser.type_into("#plugin-name", "errors");
    let file = browser.element("#plugin-file");
    browser.send(
        "POST",
        &format!("/element/{file}/value"),
        json!({ "text": wasm.to_str().unwrap() }),
    );
    set(&browser, "#plugin-params", "pattern=\"status\":500");
    browser.click("#deploy-plugin button[type=submit]");
    let plugins = browser.text("#plugins table");
    assert!(
        plugins.contains("errors") && plugins.contains("filter"),
        "{plugins}"
    );
    let deployed = api.call("GET", "/v1/plugins/errors", None).unwrap();
    let sha256 = deployed["versions"][0]["sha256"].as_str().unwrap();
    assert!(plugins.contains(&sha256[..12]), "{plugins}");
    set(&browser, "#pipeline-name", "errors");
    set(&browser, "#pipeline-from", "events");
    set(&browser, "#pipeline-through", "errors");
    set(&browser, "#pipeline-to", "events_errors");
    set(&browser, "#pipeline-start", "earliest");
    browser.click("#create-pipeline button[type=submit]");
    let row = browser.until(
        "the pipeline through",
        "const t = document.querySelector('#pipelines table'); return t ? t.innerText : '';",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("events → events_errors\t0\t2,000\t200"))
        },
    );
    let status = api.call("GET", "/v1/pipelines/errors", None).unwrap();
    assert_eq!(status["records_out"], 200, "{status} / {row}");
    browser.screenshot("pipelines");

    // A query's answer is a table, the same as the API's; a bad one shows the API's error.
    browser.open(&format!("{ui}#/sql"));
    browser.text("#sql-tables li");
    assert!(browser.text("#sql-tables").contains("weir.topics"));
    set(&browser, "#sql-editor", "SELECT count(*) AS n FROM logs");
    browser.click("#sql-run");
    let answer = browser.text("#sql-result table");
    assert!(answer.contains("n\n1000000"), "{answer}");
    set(&browser, "#sql-editor", "SELECT nope FROM logs");
    browser.click("#sql-run");
    let error = browser.text(".error");
    let api_error = api
        .call(
            "POST",
            "/v1/sql",
            Some(&json!({"sql": "SELECT nope FROM logs"})),
        )
        .unwrap_err()
        .to_string();
    assert!(api_error.contains(error.trim()), "{error} / {api_error}");
    // A time column and a number make a chart.
    set(
        &browser,
        "#sql-editor",
        "SELECT timestamp, \"offset\" FROM events LIMIT 20",
    );
    browser.click("#sql-run");
    browser.text("#sql-result .uplot");
    browser.screenshot("sql");
    // EXPLAIN ANALYZE: an operator a row, with the rows it put out.
    set(
        &browser,
        "#sql-editor",
        "EXPLAIN ANALYZE SELECT count(*) FROM events WHERE value LIKE '%500%'",
    );
    browser.click("#sql-run");
    let filtered = browser.until(
        "the plan's rows",
        "const row = [...document.querySelectorAll('#sql-plan tr')]
            .find(r => r.cells[0].innerText.includes('FilterExec'));
         return row ? row.cells[1].innerText : '';",
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    );
    assert_eq!(filtered, "200");
    assert!(browser.text("#sql-plan table").contains("TopicScan"));
    browser.screenshot("explain");

    // By now the node has sampled its rates: the overview draws them.
    browser.open(&ui);
    browser.until(
        "the rate charts",
        "return document.querySelectorAll('#main .uplot').length;",
        |v| *v == 2,
    );
    browser.screenshot("overview");

    // With the keyboard alone: back from the page to the SQL link, open it, run a statement.
    browser.tab_back_to("SQL");
    browser.press(&[], ENTER);
    browser.until("the editor focused", ACTIVE, |v| *v == "sql-editor");
    set(&browser, "#sql-editor", "SELECT count(*) AS n FROM events");
    browser.press(&[CONTROL], ENTER);
    assert!(browser.text("#sql-result table").contains("n\n2000"));
    // The first stop of the page skips to its content.
    browser.tab_back_to("skip");
    browser.press(&[], ENTER);
    browser.until("the content focused", ACTIVE, |v| *v == "main");

    // In a phone-sized window nothing is wider than the screen.
    browser.send("POST", "/window/rect", json!({"width": 390, "height": 844}));
    // Answers the elements that reach past the window's right edge, if any.
    let fits = "if (document.documentElement.scrollWidth <= window.innerWidth) return [];
        return [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth)
            .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className).slice(0, 5);";
    let pages = [
        ("#/", "Overview", "#node-cards"),
        ("#/topics", "Topics", "main table"),
        ("#/groups/readers", "Group readers", "#group-offsets table"),
        ("#/pipelines", "Pipelines and plugins", "#pipelines table"),
        ("#/sql", "SQL", "#sql-tables li"),
        ("#/topics/logs", "Topic logs", "#records article"),
    ];
    for (page, title, data) in pages {
        browser.open(&format!("{ui}{page}"));
        browser.until(
            &format!("{page} drawn"),
            "const h = document.querySelector('main h1'); return h ? h.innerText : '';",
            |v| *v == title,
        );
        browser.text(data);
        let wide = browser.run(fits, json!([]));
        assert_eq!(wide, json!([]), "{page} is wider than the window");
    }
    browser.screenshot("narrow");
    node.stop();
}
