"""Fixtures of the page tests: a real stack behind either front, a user of each role, and the
browser session that drives them (tests/support/app_browser.py)."""

from app_browser import app_front, nginx_app_front, page_users, sidecar_front

__all__ = ["app_front", "nginx_app_front", "page_users", "sidecar_front"]
