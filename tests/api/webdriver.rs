//! A small W3C WebDriver client over reqwest, driving Debian's Chromium through
//! chromedriver (no browser download, no second HTTP stack).
//!
//! `Browser::start()` is `None` (the test skips with a printed reason) when chromedriver or
//! Chromium is missing, except under `CI=true`, where that is a failure.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    client: reqwest::Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

fn executable(env: &str, default: &str) -> Option<String> {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    std::path::Path::new(&path).exists().then_some(path)
}

impl Browser {
    pub async fn start() -> Option<Browser> {
        let driver = executable("SESSIONGATE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = executable("SESSIONGATE_TEST_CHROMIUM", "/usr/bin/chromium");
        // The browser tests run only with SESSIONGATE_TEST_BROWSER set or under CI=true
        // (build.rs): a missing browser is a failure, never a skip.
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            panic!(
                "chromium and chromedriver are needed for the browser tests \
                 (apt-get install chromium chromium-driver)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        use std::os::unix::process::CommandExt;
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            // A group of its own, so that Chromium goes with it even if a test panics.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {driver}: {e}"));
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let answer: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {answer}"))
            .to_owned();
        Some(Browser {
            client,
            session: format!("{base}/session/{session}"),
            driver: child,
            _profile: profile,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_command(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("WebDriver {path}: {error}"),
        }
    }

    async fn try_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session))
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match answer["value"]["error"].as_str() {
            Some(error) => Err(format!("{error}: {}", answer["value"]["message"])),
            None => Ok(answer["value"].clone()),
        }
    }

    pub async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page (as a user's browser extension or devtools could).
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn url(&self) -> String {
        let url = self.command(reqwest::Method::GET, "/url", None).await;
        url.as_str().unwrap().to_owned()
    }

    pub async fn source(&self) -> String {
        let html = self.command(reqwest::Method::GET, "/source", None).await;
        html.as_str().unwrap().to_owned()
    }

    /// The first element matching `css`; fails the test if there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches `{css}`"))
    }

    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = found.as_array()?.first()?[ELEMENT].as_str()?.to_owned();
        Some(Element { browser: self, id })
    }

    pub async fn count(&self, css: &str) -> usize {
        self.command(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }

    /// Saves a screenshot as `name` in `$SESSIONGATE_SCREENSHOTS` when that is set (the
    /// README's pictures are made so).
    pub async fn save_screenshot(&self, name: &str) {
        let png = self.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Ok(dir) = std::env::var("SESSIONGATE_SCREENSHOTS") {
            std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
        }
    }
}

impl Browser {
    /// Ends the browser session (Chromium exits), then the driver.
    pub async fn quit(self) {
        let _ = self.client.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's whole process group: chromedriver and any Chromium it left.
        // Best effort: `kill` may find them gone already.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    pub async fn click(&self) {
        self.browser
            .command(reqwest::Method::POST, &self.path("/click"), Some(json!({})))
            .await;
    }

    /// Clicks something that loads another page (a link, a form's button) and waits until
    /// the page it was on is gone.
    pub async fn click_to_navigate(&self) {
        let page = self.browser.find("html").await;
        self.click().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self
            .browser
            .try_command(reqwest::Method::GET, &page.path("/name"), None)
            .await
            .is_ok()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the click loaded no other page"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn type_text(&self, text: &str) {
        self.browser
            .command(
                reqwest::Method::POST,
                &self.path("/value"),
                Some(json!({"text": text})),
            )
            .await;
    }

    pub async fn text(&self) -> String {
        let text = self
            .browser
            .command(reqwest::Method::GET, &self.path("/text"), None)
            .await;
        text.as_str().unwrap().to_owned()
    }
}
