//! The operator's console (`/console`) in a real browser (Debian's Chromium, headless,
//! through chromedriver), and its login and CSRF rules over plain HTTP.

use actix_web::{HttpResponse, web};
use reqwest::header;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;
use crate::webdriver::Browser;

const SESSION: &str = "2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04";

fn options(receiver: &TestReceiver) -> Options {
    let mut options = Options::with_targets(
        format!(
            "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
            receiver.url("/crm")
        ) + &format!(
            "[[targets]]\nname = \"warehouse\"\nurl = \"{}\"\nevents = [\"session.finalized\"]\n",
            receiver.url("/warehouse")
        ),
    );
    options.max_attempts = 1;
    options
}

/// A gateway whose every delivery dies at its first attempt, after the Pathors `fixtures`
/// were posted and `dead` deliveries died.
async fn gateway_with_dead(fixtures: &[&str], dead: usize) -> (TestReceiver, TestApp) {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let app = spawn_app_with(options(&receiver), None).await;
    for name in fixtures {
        app.post_pathors(&fixture("pathors", name)).await;
    }
    if dead > 1 {
        app.post_agntix(&fixture("agntix", "session-created.json"))
            .await;
    }
    app.wait_for_deliveries(DeliveryStatus::Dead, dead).await;
    (receiver, app)
}

async fn log_in(browser: &Browser, app: &TestApp) {
    browser.go(&format!("{}/console", app.admin_address)).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "sent to log in"
    );
    browser
        .find("#token")
        .await
        .type_text("not-the-token")
        .await;
    browser.find("#login").await.click_to_navigate().await;
    assert_eq!(
        browser.find("#login-error").await.text().await,
        "That is not the admin token."
    );
    browser.find("#token").await.type_text(ADMIN_TOKEN).await;
    browser.find("#login").await.click_to_navigate().await;
    assert!(
        browser.url().await.ends_with("/console/sessions"),
        "{}",
        browser.url().await
    );
}

#[cfg_attr(
    not(sg_browser),
    ignore = "needs chromium and chromedriver: set SESSIONGATE_TEST_BROWSER=1"
)]
#[tokio::test]
async fn an_operator_finds_a_session_reads_its_timeline_retries_and_replays() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // Dead: to crm, call.ended, session.finalized and the Agntix session.started; to
    // warehouse, session.finalized.
    let (receiver, app) =
        gateway_with_dead(&["call-ended.json", "session-finalized-call.json"], 4).await;

    log_in(&browser, &app).await;
    assert_eq!(
        browser.count("#sessions tbody tr").await,
        2,
        "both sessions, newest first"
    );
    let health = browser.find("#health").await.text().await;
    assert!(health.contains("store: ok"), "{health}");
    assert!(health.contains("crm 0 queued · 3 dead"), "{health}");

    // Find the session by id, open its timeline.
    browser.find("#session").await.type_text(SESSION).await;
    browser.find("#find").await.click_to_navigate().await;
    assert_eq!(browser.count("#sessions tbody tr").await, 1);
    browser
        .find("#sessions a.session")
        .await
        .click_to_navigate()
        .await;
    assert_eq!(browser.find("#session-id").await.text().await, SESSION);
    let requests = browser.find("#requests").await.text().await;
    assert!(requests.contains("Vendor requests (2)"), "{requests}");
    assert!(
        requests.contains("call.ended") && requests.contains("202 accepted"),
        "{requests}"
    );
    let source = browser.source().await;
    assert!(
        source.contains(SESSION) && source.contains("\"sessionId\""),
        "raw bodies shown"
    );
    assert_eq!(browser.count("article.event").await, 2);
    assert_eq!(browser.count("div.delivery[data-status=dead]").await, 3);
    let dead = browser
        .find("div.delivery[data-status=dead]")
        .await
        .text()
        .await;
    assert!(
        dead.contains("HTTP 500") && dead.contains("1 attempt in this schedule"),
        "{dead}"
    );
    browser.save_screenshot("console-timeline.png").await;

    // Retry one dead delivery and see it delivered.
    receiver.answer(Reply::status(200));
    browser
        .find("div.delivery[data-status=dead] button.retry")
        .await
        .click_to_navigate()
        .await;
    assert!(
        browser
            .find("#notice")
            .await
            .text()
            .await
            .ends_with("is queued again.")
    );
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    browser.go(&browser.url().await).await;
    assert_eq!(
        browser.count("div.delivery[data-status=delivered]").await,
        1
    );
    assert_eq!(browser.count("div.delivery[data-status=dead]").await, 2);

    // Replay the call.ended event to crm: a new delivery, the same event id.
    let before = receiver.received().len();
    browser
        .find("article.event[data-type='call.ended'] select[name=target] option[value=crm]")
        .await
        .click()
        .await;
    browser
        .find("article.event[data-type='call.ended'] button.replay")
        .await
        .click_to_navigate()
        .await;
    let notice = browser.find("#notice").await.text().await;
    assert!(
        notice.starts_with("Event evt_")
            && notice.ends_with(" is being sent again as 1 new delivery."),
        "{notice}"
    );
    let got = receiver.wait_for(before + 1).await;
    let replayed = got.last().unwrap().json();
    assert_eq!(replayed["type"], "call.ended");
    assert_eq!(
        got.iter()
            .filter(|g| g.json()["id"] == replayed["id"])
            .count(),
        3,
        "the failed attempt, the retry and the replay, all with the event's id"
    );

    // Dead letters: three left (crm's two, warehouse's one); retry all of them at once.
    browser
        .go(&format!("{}/console/dead", app.admin_address))
        .await;
    assert_eq!(browser.count("#dead tbody tr").await, 3);
    browser.save_screenshot("console-dead-letters.png").await;
    browser.find("#retry-all").await.click_to_navigate().await;
    assert_eq!(
        browser.find("#notice").await.text().await,
        "3 dead deliveries are queued again."
    );
    app.wait_for_deliveries(DeliveryStatus::Delivered, 5).await;
    browser
        .go(&format!("{}/console/dead", app.admin_address))
        .await;
    assert!(
        browser
            .find("#no-dead")
            .await
            .text()
            .await
            .starts_with("No dead delivery")
    );
    browser.quit().await;
}

#[cfg_attr(
    not(sg_browser),
    ignore = "needs chromium and chromedriver: set SESSIONGATE_TEST_BROWSER=1"
)]
#[tokio::test]
async fn the_console_shows_every_request_utc_times_and_attempts_as_an_operator_reads_them() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    // crm answers 500; "gone" refuses connections, an error longer than a table cell.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"call.ended\"]\n\
         [[targets]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{closed_port}/hook\"\nevents = [\"session.finalized\"]\nsources = [\"agntix\"]\n",
        receiver.url("/crm")
    ));
    options.max_attempts = 1;
    let app = spawn_app_with(options, None).await;
    // The same Pathors request twice (the second a duplicate), and an Agntix session.
    let call = fixture("pathors", "call-ended.json");
    assert_eq!(app.post_pathors(&call).await.status(), 202);
    assert_eq!(app.post_pathors(&call).await.status(), 200);
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-ended.json"))
            .await
            .status(),
        202
    );
    app.wait_for_deliveries(DeliveryStatus::Dead, 2).await;
    log_in(&browser, &app).await;

    // The sessions list: agent, outcome and duration; times in UTC.
    let rows = browser.find("#sessions tbody").await.text().await;
    assert!(
        rows.contains("40235145-aa3d-443e-9d0c-841dd0716a2f"),
        "the agent: {rows}"
    );
    assert!(
        rows.contains("completed") && rows.contains("1 min 18 s"),
        "outcome and duration: {rows}"
    );
    assert!(rows.contains(" UTC"), "{rows}");

    // The Pathors session's timeline: both requests, the duplicate said to be one.
    browser
        .go(&format!(
            "{}/console/sessions/pathors/{SESSION}",
            app.admin_address
        ))
        .await;
    let requests = browser.find("#requests").await.text().await;
    assert!(requests.contains("Vendor requests (2)"), "{requests}");
    assert_eq!(
        browser
            .count("article.request[data-outcome=duplicate]")
            .await,
        1
    );
    assert!(requests.contains("200 duplicate"), "{requests}");
    assert!(requests.contains(" UTC"), "{requests}");
    let dead = browser
        .find("div.delivery[data-status=dead]")
        .await
        .text()
        .await;
    assert!(dead.contains("1 attempt in this schedule"), "{dead}");

    // A retry that fails again: the second attempt is numbered 2 and marked.
    browser
        .find("div.delivery[data-status=dead] button.retry")
        .await
        .click_to_navigate()
        .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let died_again = app
            .store
            .deliveries(sessiongate::store::DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                limit: 10,
                with_attempts: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .any(|d| d.target == "crm" && d.attempt_log.as_ref().is_some_and(|l| l.len() == 2));
        if died_again {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retried delivery never died again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    browser.go(&browser.url().await).await;
    let attempts = browser
        .find("div.delivery[data-status=dead] table.attempts tbody")
        .await
        .text()
        .await;
    let lines: Vec<&str> = attempts.lines().collect();
    assert!(lines[0].starts_with("1 "), "{attempts}");
    assert!(lines[1].starts_with("2 after a retry"), "{attempts}");

    // Dead letters: a long error is cut in the table, whole in its title.
    browser
        .go(&format!("{}/console/dead", app.admin_address))
        .await;
    let cell = browser.find("#dead span.error").await.text().await;
    assert!(cell.ends_with('…') && cell.chars().count() <= 80, "{cell}");
    assert!(
        browser.source().await.contains("title=\"connection failed"),
        "the whole error is kept"
    );
    browser.quit().await;
}

/// A page on another origin that posts a forged form to the console.
async fn forged_form(data: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html")
        .body(data.get_ref().clone())
}

#[cfg_attr(
    not(sg_browser),
    ignore = "needs chromium and chromedriver: set SESSIONGATE_TEST_BROWSER=1"
)]
#[tokio::test]
async fn a_forged_form_from_another_site_is_refused_in_the_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (_receiver, app) = gateway_with_dead(&["call-ended.json"], 1).await;
    log_in(&browser, &app).await;

    let page = format!(
        r#"<!doctype html><form method="post" action="{}/console/dead/retry">
           <input type="hidden" name="csrf" value="guessed"><input type="hidden" name="target" value="">
           <button id="bait" type="submit">Win a prize</button></form>"#,
        app.admin_address
    );
    let (address, _site) = serve(web::Data::new(page), forged_form);
    browser.go(&format!("http://{address}/")).await;
    browser.find("#bait").await.click_to_navigate().await;
    let refused = browser.find("#refused").await.text().await;
    assert!(refused.contains("another site"), "{refused}");
    assert_eq!(
        app.deliveries(Some(DeliveryStatus::Dead)).await.len(),
        1,
        "nothing changed"
    );
    browser.quit().await;
}

#[cfg_attr(
    not(sg_browser),
    ignore = "needs chromium and chromedriver: set SESSIONGATE_TEST_BROWSER=1"
)]
#[tokio::test]
async fn an_action_goes_back_only_to_a_console_page_however_its_path_is_written() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (_receiver, app) = gateway_with_dead(&["call-ended.json"], 1).await;
    log_in(&browser, &app).await;
    for back in [
        "/console/../admin/sessions",
        "/console/%2e%2e/admin/sessions",
    ] {
        browser
            .go(&format!("{}/console/dead", app.admin_address))
            .await;
        // The form's own `back` rewritten in the page, as a tampered request would send it.
        browser
            .execute(&format!(
                "document.querySelectorAll('input[name=back]').forEach(i => i.value = {back:?});"
            ))
            .await;
        browser.find("#retry-all").await.click_to_navigate().await;
        let url = browser.url().await;
        assert!(
            url.starts_with(&format!("{}/console/", app.admin_address)),
            "{back} led to {url}"
        );
    }
    browser.quit().await;
}

/// The console over plain HTTP: the cookie's attributes, the CSP, and each way a
/// state-changing request is refused.
#[tokio::test]
async fn the_console_needs_a_login_and_a_csrf_token_for_every_change() {
    let (_receiver, app) = gateway_with_dead(&["call-ended.json"], 1).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", app.admin_address);

    let page = client.get(url("/console/sessions")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()[header::LOCATION], "/console/login");
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("form-action 'self'"),
        "{csp}"
    );

    let wrong = client
        .post(url("/console/login"))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    let login = client
        .post(url("/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let dead_page = client
        .get(url("/console/dead"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = dead_page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_owned();
    assert_eq!(csrf.len(), 64);

    let retry_all = |cookie: Option<&str>, csrf: &str, origin: Option<&str>| {
        let mut request = client
            .post(url("/console/dead/retry"))
            .form(&[("csrf", csrf), ("target", "")]);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.send()
    };
    let host = app.admin_address.clone();
    for (cookie, token, origin, why) in [
        (None, csrf.as_str(), None, "not logged in"),
        (Some(cookie.as_str()), "", None, "CSRF token is missing"),
        (
            Some(cookie.as_str()),
            &"0".repeat(64),
            None,
            "CSRF token is missing or not this login",
        ),
        (
            Some(cookie.as_str()),
            csrf.as_str(),
            Some("http://evil.example"),
            "another site",
        ),
    ] {
        let refused = retry_all(cookie, token, origin).await.unwrap();
        assert_eq!(refused.status(), 403, "{why}");
        assert!(refused.text().await.unwrap().contains(why), "{why}");
        assert_eq!(
            app.deliveries(Some(DeliveryStatus::Dead)).await.len(),
            1,
            "{why}: nothing changed"
        );
    }
    let done = retry_all(Some(&cookie), &csrf, Some(&host)).await.unwrap();
    assert_eq!(done.status(), 303);
    assert!(app.deliveries(Some(DeliveryStatus::Dead)).await.is_empty());

    // Logging out ends the login on the server, whatever the browser keeps.
    let out = client
        .post(url("/console/logout"))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = client
        .get(url("/console/dead"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.headers()[header::LOCATION], "/console/login");
}
