"""Browser end-to-end: the real server, headless Debian chromium. Admin login, upload, chat, thumbs-down,
feedback table, and no script execution from document text. Saves docs/chat.png and docs/knowledge.png."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import serving

CHROMIUM = os.environ.get("FAQ_BOT_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PASSWORD = "e2e-admin-password"
GIFT_ANSWER = "Gift cards never expire and can be used for any product."
CORRECTION = "Yes: support blocks a lost gift card and moves its balance to a new one."
FAQ_CSV = f"""id,question,answer,similar_questions,category
faq-gift,Do gift cards expire?,{GIFT_ANSWER},When does my gift card expire||Is there a gift card expiry date,gift cards
faq-ship,How long does shipping take?,Orders ship within 48 hours and arrive in 2 to 4 days.,When will my order arrive,shipping
faq-pay,Which payment methods do you accept?,We accept credit cards and PayPal.,Can I pay with PayPal,payment
"""
XSS_DOC = """Gift card terms

Gift cards can be topped up at the checkout. <script>window.__xss=1</script>
Lost gift cards can be blocked by support. <img src=x onerror="window.__xss=2">
"""
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")  # session scope: resolved before the (session-scoped) models, so a skip is instant
def chromium_path():
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is absent: install Debian chromium (make browser-deps) to run the browser test"
        print(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def server(chromium_path, tmp_path_factory, faq_encoder, doc_encoder, tiny_lm_dir):
    """The app as `serve()` builds it, over an empty store, admin password from the environment."""
    from faq_bot.api import create_app
    from faq_bot.config import load_config
    from faq_bot.generate import load_generator
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.pipeline import Pipeline

    d = tmp_path_factory.mktemp("e2e")
    cfg = load_config(overrides={"store.path": str(d / "kb.db"), "store.index_dir": str(d / "index"),
                                 "generate.model": tiny_lm_dir, "generate.device": "cpu",
                                 "generate.max_new_tokens": 16,
                                 # the document question below must reach retrieval, not the FAQ
                                 "faq.answer_threshold": 0.9, "faq.suggest_threshold": 0.6,
                                 # the tiny random LM cannot rewrite follow-ups; questions here stand alone
                                 "rewrite.enabled": False}, environ={})
    pipeline = Pipeline(cfg, KnowledgeBase(cfg), generator=load_generator(cfg.generate))
    pipeline.warm_up(background=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAQ_BOT_ADMIN_PASSWORD", PASSWORD)
        app = create_app(pipeline, cfg)
    with serving(app) as url:
        yield url, d


@pytest.fixture(scope="module")
def page(server, chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.set_default_timeout(30_000)
        yield pg
        browser.close()


def _assert_no_injection(page):
    """Document and user text never became elements, and nothing ran."""
    injected = page.evaluate("""() => [...document.querySelectorAll('script, img, iframe, a')]
        .map(e => e.outerHTML).filter(h => h.includes('__xss'))""")
    assert injected == [] and page.evaluate("window.__xss") is None


def test_browser_admin_upload_chat_feedback_and_no_xss(chromium_path, server, page):
    from playwright.sync_api import expect

    url, tmp = server
    (tmp / "shop_faq.csv").write_text(FAQ_CSV, encoding="utf-8")
    (tmp / "gift_terms.txt").write_text(XSS_DOC, encoding="utf-8")
    page.goto(url)
    page.wait_for_selector("#question textarea")

    # Admin: log in, upload an FAQ table and a document whose text holds a script
    page.get_by_role("tab", name="Admin").click()
    page.fill("#admin-password input", PASSWORD)
    page.click("#admin-login")
    page.wait_for_selector("#upload")
    page.set_input_files("#upload input[type=file]", [str(tmp / "shop_faq.csv"), str(tmp / "gift_terms.txt")])
    page.locator("#upload td.filename[aria-label='gift_terms.txt']").wait_for()  # uploaded to the server
    page.click("#ingest")
    page.locator("#ingest-result li").nth(1).wait_for()
    result = page.inner_text("#ingest-result")
    assert "✓ shop_faq.csv: added, 3 FAQs" in result and "✓ gift_terms.txt: added" in result
    expect(page.locator("#faqs")).to_contain_text("Do gift cards expire?")

    # The document's text is shown (retrieval table of "test a question"), escaped, not executed
    page.get_by_placeholder("A customer question").fill("Can lost gift cards be blocked?")
    page.get_by_role("button", name="Test", exact=True).click()
    retrieved = page.locator("#test-retrieved")
    expect(retrieved).to_contain_text("gift_terms.txt")
    assert "<script>window.__xss=1</script>" in retrieved.text_content()  # shown as text
    _assert_no_injection(page)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "knowledge.png"), full_page=True)

    # Chat: an FAQ answer, then a refusal with a "did you mean"; thumbs-down on the refusal with a correction
    page.get_by_role("tab", name="Chat").click()
    dislikes = page.locator("#chatbot button[aria-label='Dislike']")  # one per final answer
    for i, question in enumerate(("Do gift cards expire?", "Can lost gift cards be blocked?")):
        page.fill("#question textarea", question)
        page.keyboard.press("Enter")
        expect(dislikes).to_have_count(i + 1)
    expect(page.locator("#chatbot")).to_contain_text(GIFT_ANSWER)
    dislikes.nth(1).click()
    page.get_by_placeholder("The right answer would be…").fill(CORRECTION)
    page.get_by_role("button", name="Send correction").click()
    page.get_by_text("your correction was saved").wait_for()
    for summary in page.locator("#chatbot details summary").all():  # open cited sources, if any
        summary.click()
    page.screenshot(path=str(DOCS / "chat.png"), full_page=True)

    # "Did you mean" asks the suggested question; user text is escaped too
    page.locator("#suggestions").get_by_role("button", name="Do gift cards expire?").click()
    expect(dislikes).to_have_count(3)
    expect(page.locator("#chatbot .message.user").last).to_have_text("Do gift cards expire?")
    page.fill("#question textarea", "Gift card <img src=x onerror=\"window.__xss=3\">?")
    page.keyboard.press("Enter")
    expect(dislikes).to_have_count(4)
    expect(page.locator("#chatbot")).to_contain_text('<img src=x onerror="window.__xss=3">')
    _assert_no_injection(page)

    # Admin: the thumbs-down is in the feedback table, with the correction
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Feedback").click()
    page.get_by_role("radio", name="thumbs down").check()
    table = page.locator("#feedback-table")
    expect(table).to_contain_text(CORRECTION)
    assert "Can lost gift cards be blocked?" in table.inner_text()

    # Debug: the last answer's full trace
    page.get_by_role("tab", name="Debug").click()
    page.get_by_role("button", name="Last answer").click()
    expect(page.locator("#trace-json")).to_contain_text("retrieve")
    _assert_no_injection(page)
