"""`snapfs serve` in a real browser: Debian's headless Chromium, driven by Selenium through
chromium-driver, clicks its way through a datastore as a user would.

The screenshot for the README (docs/serve.png) is the one `test_screenshot_of_a_directory`
takes; to refresh it:

    SNAPFS_SERVE_SCREENSHOT=docs/serve.png pytest tests/serve/test_browser.py -k screenshot
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from support.serving import (
    T0,
    backup_tree,
    check_zip,
    served,
    server_env,
    snapfs_command,
    write,
)

pytestmark = pytest.mark.slow  # a browser, two servers: about 15 s

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DAY = 86400
DOWNLOAD_TIMEOUT = 30.0
WIDTH, HEIGHT = 1280, 800


@dataclass
class Site:
    url: str  # http://127.0.0.1:PORT
    tree: Path  # the source of ns prod's host/web snapshots (as of the last one)
    times: list[str]  # the snapshots' time names
    ds: Path
    env: dict[str, str]


#: /etc of the screenshot: (name, size, mode); contents are filler of that size.
ETC = [
    ("adduser.conf", 3040, 0o644),
    ("bash.bashrc", 1994, 0o644),
    ("crontab", 1042, 0o644),
    ("environment", 0, 0o644),
    ("fstab", 664, 0o644),
    ("hostname", 5, 0o644),
    ("hosts", 186, 0o644),
    ("issue", 27, 0o644),
    ("locale.gen", 10_156, 0o644),
    ("login.defs", 12_569, 0o644),
    ("machine-id", 33, 0o444),
    ("motd", 286, 0o644),
    ("nsswitch.conf", 494, 0o644),
    ("resolv.conf", 78, 0o644),
    ("shells", 151, 0o644),
    ("sudoers", 1714, 0o440),
    ("timezone", 14, 0o644),
]


def _settle(tree: Path, when: int, paths=None) -> None:
    """Fixed modification times in the months before `when` (for every entry, or `paths`), so
    the pages, and the screenshot, look the same on every run."""
    entries = paths or list(tree.rglob("*"))
    for path in entries:
        rel = str(path.relative_to(tree)).encode()
        seconds = when - 3600 - int.from_bytes(hashlib.sha256(rel).digest()[:4]) % (300 * DAY)
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9), follow_symlinks=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A datastore with a tree a web server might have, in namespace prod (two snapshots) and
    in the root namespace (one), served for the whole module."""
    base = tmp_path_factory.mktemp("browser")
    ds, tree = base / "ds", base / "tree"
    rng = random.Random(7)
    for name, size, mode in ETC:
        path = write(tree / "etc" / name, (b"# " + name.encode() + b"\n" + b"x" * size)[:size])
        os.chmod(path, mode)
    write(tree / "etc/nginx/nginx.conf", b"worker_processes auto;\nevents {}\nhttp {}\n")
    write(tree / "etc/nginx/mime.types", b"types { text/html html; }\n" * 40)
    write(tree / "etc/nginx/sites-available/default", b"server { listen 80; root /srv/www; }\n")
    write(tree / "etc/nginx/sites-available/empty.conf", b"")
    os.symlink("../sites-available/default", tree / "etc/nginx/sites-default-link")
    write(tree / "etc/ssh/sshd_config", b"PermitRootLogin no\nPasswordAuthentication no\n")
    write(tree / "etc/apt/sources.list", b"deb http://deb.debian.org/debian bookworm main\n")
    write(tree / "etc/systemd/system/app.service", b"[Service]\nExecStart=/srv/app/run\n")
    write(tree / "srv/www/index.html", b"<!doctype html><title>web1</title><h1>It works</h1>\n")
    write(tree / "srv/www/logo.png", rng.randbytes(48_000))
    write(tree / "home/alice/notes.txt", b"call the backup people\n")
    write(tree / "home/alice/report.pdf", rng.randbytes(700_000))
    write(tree / "var/log/syslog", b"Jun  1 00:00:01 web1 CRON[42]: (root) CMD (run-parts)\n" * 300)
    write(tree / "var/lib/app/state.db", rng.randbytes(2 << 20))
    os.chown(tree / "srv/www", 33, 33)
    for path in (tree / "srv/www").iterdir():
        os.chown(path, 33, 33)
    _settle(tree, T0)
    times = [backup_tree(ds, tree, "host/web", T0, ns=("prod",)).rsplit("/", 1)[1]]
    backup_tree(ds, tree, "host/web", T0)
    changed = [
        write(tree / "etc/nginx/nginx.conf", b"worker_processes 4;\nevents {}\nhttp {}\n"),
        write(tree / "home/alice/notes.txt", b"called the backup people: all fine\n"),
    ]
    _settle(tree, T0 + DAY, changed)
    times.append(backup_tree(ds, tree, "host/web", T0 + DAY, ns=("prod",)).rsplit("/", 1)[1])
    env = server_env(base / "cache")
    with served(ds, "--listen", "127.0.0.1:0", env=env, log=base / "stderr") as server:
        yield Site(server.url.removesuffix("/browse/"), tree, times, ds, env)
        assert "Traceback" not in server.stderr(), server.stderr()[-3000:]


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    """Headless Chromium; fails (never skips) when it or its driver is not installed."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            pytest.fail(f"{program} is missing: install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver
    finally:
        driver.quit()


def wait_for_download(folder: Path, name: str) -> Path:
    """The downloaded file, once Chromium has finished writing it."""
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT
    path = folder / name
    while not path.exists() or any(p.suffix == ".crdownload" for p in folder.iterdir()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not downloaded; the folder has {os.listdir(folder)}")
        time.sleep(0.05)
    return path


def click(driver, text: str) -> None:
    driver.find_element(By.LINK_TEXT, text).click()


def row_link(driver, name: str, action: str):
    """The link `action` (download, zip, tar.zst) in the row of the entry shown as `name`."""
    return driver.find_element(
        By.XPATH, f"//tr[td[@class='name']/a[normalize-space()='{name}']]//a[text()='{action}']"
    )


def test_walk_to_a_file_in_a_namespace_and_download_it(browser, site, downloads):
    browser.get(site.url + "/")
    assert browser.current_url == site.url + "/browse/"
    assert browser.title.startswith("datastore")
    for name in ("ns/", "prod/", "host/", "web/", f"{site.times[-1]}/", "root.pxar/"):
        click(browser, name)
        assert browser.current_url.endswith("/" + name)
    assert browser.current_url == (
        f"{site.url}/browse/ns/prod/host/web/{site.times[-1]}/root.pxar/"
    )
    for name in ("home/", "alice/"):
        click(browser, name)
    click(browser, "report.pdf")  # the file's page
    assert "700000 bytes" in browser.find_element(By.TAG_NAME, "body").text
    click(browser, "download")
    got = wait_for_download(downloads, "report.pdf")
    assert got.read_bytes() == (site.tree / "home/alice/report.pdf").read_bytes()
    # The breadcrumbs lead back up; the listing's own download link works too.
    click(browser, "alice")
    row_link(browser, "notes.txt", "download").click()
    got = wait_for_download(downloads, "notes.txt")
    assert got.read_bytes() == (site.tree / "home/alice/notes.txt").read_bytes()


def test_download_a_directory_as_zip(browser, site, downloads):
    browser.get(f"{site.url}/browse/ns/prod/host/web/{site.times[-1]}/root.pxar/etc/")
    row_link(browser, "nginx/", "zip").click()
    got = wait_for_download(downloads, "nginx.zip")
    check_zip(got.read_bytes(), site.tree / "etc/nginx")


def test_search_box_lists_the_snapshots_holding_a_file(browser, site):
    browser.get(f"{site.url}/browse/")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("nginx.conf", Keys.ENTER)
    # A form sent with Enter navigates after send_keys returns (a click on a link is waited for).
    WebDriverWait(browser, DOWNLOAD_TIMEOUT).until(
        expected_conditions.url_to_be(f"{site.url}/search?q=nginx.conf")
    )
    assert browser.find_element(By.TAG_NAME, "h1").text == "search: nginx.conf"
    assert [h.text for h in browser.find_elements(By.TAG_NAME, "h2")] == ["/etc/nginx/nginx.conf"]
    places = sorted(a.text for a in browser.find_elements(By.CSS_SELECTOR, "li a"))
    first, second = site.times
    # The first version in both namespaces' first snapshots, the second in prod's second.
    assert places == sorted(
        [f"host/web/{first}", f"prod:host/web/{first}", f"prod:host/web/{second}"]
    )
    click(browser, f"prod:host/web/{second}")
    assert browser.current_url == (
        f"{site.url}/browse/ns/prod/host/web/{second}/root.pxar/etc/nginx/nginx.conf"
    )
    assert "nginx.conf" in browser.title


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_screenshot_of_a_directory(browser, site, tmp_path):
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        browser.get(f"{site.url}/browse/ns/prod/host/web/{site.times[-1]}/root.pxar/etc/")
        shot = tmp_path / "serve.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert _png_size(shot.read_bytes()) == (WIDTH, HEIGHT)
    target = os.environ.get("SNAPFS_SERVE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)


def test_a_user_who_logged_in_browses_on(browser, site, tmp_path):
    """Basic authentication as a browser does it: it asks without credentials first, for each
    new path, and only then sends them; that must never count as failed logins."""
    users, password = tmp_path / "users", tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    added = subprocess.run(
        snapfs_command(
            "serve", "--auth-file", users, "--add-user", "alice", "--user-password-file", password
        ),
        capture_output=True,
        text=True,
        env=site.env,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    with served(
        site.ds, "--listen", "127.0.0.1:0", "--auth-file", users, env=site.env,
        log=tmp_path / "stderr",
    ) as guarded:  # fmt: skip
        url = guarded.url.replace("http://", "http://alice:correct%20horse%20battery%20staple@")
        browser.get(url)
        path = ["ns/", "prod/", "host/", "web/", f"{site.times[0]}/", "root.pxar/", "etc/"]
        for _ in range(3):  # 21 pages, each new path asked for without credentials first
            for name in path:
                click(browser, name)
                assert "too many failed logins" not in browser.page_source, browser.current_url
                assert browser.find_element(By.TAG_NAME, "h1").text == name.rstrip("/")
            click(browser, "datastore")
        assert "login failed" not in guarded.stderr()
