"""The local page (placeholder until the page issue builds it)."""
from flask import Blueprint, render_template_string

pages = Blueprint("pages", __name__)


@pages.get("/")
def home():
    return render_template_string(
        "<!doctype html><html lang=en><meta charset=utf-8><title>crewnode</title>"
        "<h1>crewnode</h1><p>Your node is running. The full page is coming; the JSON API is at "
        "<code>/api/</code>.</p></html>")
